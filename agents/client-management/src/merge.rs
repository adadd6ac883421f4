//! Merge: sources' tags (and, as later agents add them, documents and recordings) move to the
//! target, empty target fields are filled from the sources, and the sources are deleted, in one
//! audited transaction.

use agentdesk_agent_sdk::core::models::client::Client;
use agentdesk_agent_sdk::core::services::audit::{Outcome, diff};
use agentdesk_agent_sdk::core::services::clients::ClientFields;
use agentdesk_agent_sdk::core::services::permissions::Permit;
use agentdesk_agent_sdk::core::{Core, Error, Result};
use serde_json::json;
use uuid::Uuid;

/// Merges `sources` into `target`. `write` must be a `clients:write` permit and `delete` a
/// `clients:delete` permit of the same user; every client must be in both scopes.
pub async fn merge_clients(
    core: &Core,
    write: &Permit,
    delete: &Permit,
    target: Uuid,
    sources: &[Uuid],
) -> Result<Client> {
    write.require("clients", "write")?;
    delete.require("clients", "delete")?;
    let mut unique = sources.to_vec();
    unique.sort();
    unique.dedup();
    if unique.is_empty() {
        return Err(Error::invalid(
            "source_ids",
            "name at least one client to merge into the target",
        ));
    }
    if unique.len() > 100 {
        return Err(Error::invalid("source_ids", "at most 100 clients at once"));
    }
    if unique.contains(&target) {
        return Err(Error::invalid(
            "source_ids",
            "the target cannot be one of the sources",
        ));
    }
    let current = core.scoped_client(write, target).await?;
    let mut merged_sources = Vec::new();
    for id in &unique {
        let source = core.scoped_client(write, *id).await?;
        if !delete.scope().covers(*id) {
            return Err(core
                .deny_out_of_scope(delete, "client", id, Some(*id))
                .await);
        }
        merged_sources.push(source);
    }
    let mut fields = ClientFields::from_client(&current);
    for source in &merged_sources {
        for tag in &source.tags {
            if !fields.tags.contains(tag) && fields.tags.len() < 50 {
                fields.tags.push(tag.clone());
            }
        }
        fields.email = fields.email.or_else(|| source.email.clone());
        fields.phone = fields.phone.or_else(|| source.phone.clone());
        fields.company = fields.company.or_else(|| source.company.clone());
        fields.notes = fields.notes.or_else(|| source.notes.clone());
        if let (Some(base), Some(extra)) =
            (fields.metadata.as_object_mut(), source.metadata.as_object())
        {
            for (k, v) in extra {
                base.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    let txn = core.db.begin().await?;
    // Sources go first, so that an email taken over from one is free for the target.
    for source in &merged_sources {
        core.remove_client(&txn, source.id).await?;
        core.reassign_client_records(&txn, source.id, target)
            .await?;
        let record = delete
            .audit("client.delete", Outcome::Success)
            .resource("client", source.id)
            .client(Some(source.id))
            .changes(json!({"before": source, "after": null, "merged_into": target}));
        core.append(&txn, record).await?;
    }
    let updated = core.write_client(&txn, target, &fields, None).await?;
    let mut changes = diff(
        &serde_json::to_value(&current).unwrap_or_default(),
        &serde_json::to_value(&updated).unwrap_or_default(),
        &[],
    );
    changes["merged"] = json!(unique);
    let record = write
        .audit("client.merge", Outcome::Success)
        .resource("client", target)
        .client(Some(target))
        .changes(changes);
    core.append(&txn, record).await?;
    txn.commit().await?;
    Ok(updated)
}
