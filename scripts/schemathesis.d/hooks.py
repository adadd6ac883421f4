"""Schemathesis hooks for agentdesk: the admin's login as the run's credential.

Some generated requests end the caller's own session, as they should (a logout, the
deletion of the session by id), so a fixed token would leave the rest of the run at 401.
The provider logs in again whenever schemathesis sees a 401 (its re-authentication).
"""

import os

import requests
import schemathesis

BASE = os.environ["AGENTDESK_FUZZ_BASE_URL"]
EMAIL = os.environ["AGENTDESK_ADMIN_EMAIL"]
PASSWORD = os.environ["AGENTDESK_ADMIN_PASSWORD"]


@schemathesis.auth()
class AdminSession:
    def get(self, case, context):
        answer = requests.post(
            f"{BASE}/api/v1/auth/login",
            json={"email": EMAIL, "password": PASSWORD},
            timeout=30,
        )
        answer.raise_for_status()
        return answer.json()["access_token"]

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.hook
def filter_case(context, case):
    """A text/csv body is text: a generated JSON object or number would be sent as its text,
    which is a CSV like any other, so such a case tests nothing the document rules out."""
    if "csv" in (case.media_type or "") and not isinstance(case.body, (str, bytes)):
        return False
    return True
