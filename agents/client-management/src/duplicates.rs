//! Likely duplicates: clients are grouped into blocks by normalised email, phone and the first
//! letters of the name, and compared only within a block (never every pair). Matches join into
//! groups (union-find), each with its best score and the reasons.

use std::collections::HashMap;

use agentdesk_agent_sdk::core::Core;
use agentdesk_agent_sdk::core::services::clients::ClientKeys;
use agentdesk_agent_sdk::core::services::permissions::Permit;
use serde::Serialize;
use uuid::Uuid;

/// A group of clients that are probably the same.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DuplicateGroup {
    /// The clients, oldest first.
    pub client_ids: Vec<Uuid>,
    /// 0..=1: how sure.
    pub score: f64,
    /// Why: `same email`, `same phone`, `similar name`.
    pub reason: String,
}

/// Names compare as their letters and digits, lowercased, words sorted ("Smith, Ann" = "Ann Smith").
fn normalise_name(name: &str) -> String {
    let mut words: Vec<String> = name
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !["gmbh", "ltd", "inc", "llc", "ag", "sa", "co", "the"].contains(&w.as_str()))
        .collect();
    words.sort();
    words.join(" ")
}

/// Jaro-Winkler similarity of two strings (1.0 = equal).
pub fn jaro_winkler(a: &str, b: &str) -> f64 {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let window = (a.len().max(b.len()) / 2).saturating_sub(1);
    let (mut a_match, mut b_match) = (vec![false; a.len()], vec![false; b.len()]);
    let mut matches = 0usize;
    for i in 0..a.len() {
        let (lo, hi) = (i.saturating_sub(window), (i + window + 1).min(b.len()));
        for j in lo..hi {
            if !b_match[j] && a[i] == b[j] {
                a_match[i] = true;
                b_match[j] = true;
                matches += 1;
                break;
            }
        }
    }
    if matches == 0 {
        return 0.0;
    }
    let (mut k, mut transpositions) = (0usize, 0usize);
    for i in 0..a.len() {
        if a_match[i] {
            while !b_match[k] {
                k += 1;
            }
            if a[i] != b[k] {
                transpositions += 1;
            }
            k += 1;
        }
    }
    let m = matches as f64;
    let jaro =
        (m / a.len() as f64 + m / b.len() as f64 + (m - transpositions as f64 / 2.0) / m) / 3.0;
    let prefix = a.iter().zip(&b).take(4).take_while(|(x, y)| x == y).count() as f64;
    jaro + prefix * 0.1 * (1.0 - jaro)
}

struct Groups {
    parent: Vec<usize>,
}

impl Groups {
    fn find(&mut self, i: usize) -> usize {
        let mut root = i;
        while self.parent[root] != root {
            root = self.parent[root];
        }
        let mut i = i;
        while self.parent[i] != root {
            let next = self.parent[i];
            self.parent[i] = root;
            i = next;
        }
        root
    }

    fn join(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[rb] = ra;
        }
    }
}

/// The similarity above which two names count as the same.
pub const NAME_THRESHOLD: f64 = 0.93;
/// Blocks larger than this are compared only by exact keys (a guard against quadratic work).
const MAX_BLOCK: usize = 200;

/// Finds likely duplicates among the clients in the permit's scope.
pub async fn find_duplicates(
    core: &Core,
    permit: &Permit,
) -> agentdesk_agent_sdk::core::Result<Vec<DuplicateGroup>> {
    let clients = core.client_keys(permit).await?;
    Ok(group(&clients))
}

fn group(clients: &[ClientKeys]) -> Vec<DuplicateGroup> {
    let names: Vec<String> = clients
        .iter()
        .map(|c| normalise_name(&c.name_key))
        .collect();
    let mut blocks: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, c) in clients.iter().enumerate() {
        if let Some(e) = &c.email_key {
            blocks.entry(format!("e:{e}")).or_default().push(i);
        }
        if let Some(p) = c
            .phone_key
            .as_ref()
            .filter(|p| p.trim_start_matches('+').len() >= 6)
        {
            blocks.entry(format!("p:{p}")).or_default().push(i);
        }
        let prefix: String = names[i]
            .chars()
            .filter(|c| !c.is_whitespace())
            .take(3)
            .collect();
        if prefix.chars().count() == 3 {
            blocks.entry(format!("n:{prefix}")).or_default().push(i);
        }
    }
    let mut sets = Groups {
        parent: (0..clients.len()).collect(),
    };
    // Per pair: best score and reasons.
    let mut evidence: HashMap<(usize, usize), (f64, Vec<&'static str>)> = HashMap::new();
    for (key, members) in &blocks {
        if members.len() < 2 {
            continue;
        }
        let exact = if key.starts_with("e:") {
            Some((1.0, "same email"))
        } else if key.starts_with("p:") {
            Some((0.9, "same phone"))
        } else {
            None
        };
        if exact.is_none() && members.len() > MAX_BLOCK {
            continue;
        }
        for x in 0..members.len() {
            for y in x + 1..members.len() {
                let (i, j) = (members[x], members[y]);
                let (score, reason) = match exact {
                    Some(found) => found,
                    None => {
                        let sim = jaro_winkler(&names[i], &names[j]);
                        if sim < NAME_THRESHOLD {
                            continue;
                        }
                        (0.85 * sim, "similar name")
                    }
                };
                sets.join(i, j);
                let entry = evidence
                    .entry((i.min(j), i.max(j)))
                    .or_insert((0.0, Vec::new()));
                entry.0 = entry.0.max(score);
                if !entry.1.contains(&reason) {
                    entry.1.push(reason);
                }
            }
        }
    }
    let mut grouped: HashMap<usize, (Vec<usize>, f64, Vec<&'static str>)> = HashMap::new();
    for ((i, j), (score, reasons)) in &evidence {
        let root = sets.find(*i);
        let entry = grouped.entry(root).or_insert((Vec::new(), 0.0, Vec::new()));
        for k in [*i, *j] {
            if !entry.0.contains(&k) {
                entry.0.push(k);
            }
        }
        entry.1 = entry.1.max(*score);
        for r in reasons {
            if !entry.2.contains(r) {
                entry.2.push(r);
            }
        }
    }
    let mut out: Vec<DuplicateGroup> = grouped
        .into_values()
        .map(|(mut members, score, mut reasons)| {
            members.sort_unstable();
            reasons.sort_unstable();
            DuplicateGroup {
                client_ids: members.iter().map(|&k| clients[k].id).collect(),
                score: (score * 1000.0).round() / 1000.0,
                reason: reasons.join(", "),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.client_ids.cmp(&b.client_ids))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(name: &str, email: Option<&str>, phone: Option<&str>) -> ClientKeys {
        ClientKeys {
            id: Uuid::now_v7(),
            name_key: name.to_lowercase(),
            email_key: email.map(str::to_owned),
            phone_key: phone.map(str::to_owned),
            company: None,
        }
    }

    #[test]
    fn groups_by_email_phone_and_name() {
        let clients = vec![
            keys("Ann Smith", Some("ann@x.io"), None),
            keys("Smith, Ann", None, Some("+4930123456")),
            keys("A. Smith", Some("ann@x.io"), Some("+4930123456")),
            keys("Acme GmbH", None, None),
            keys("ACME", None, None),
            keys("Bob Jones", None, None),
        ];
        let groups = group(&clients);
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert_eq!(groups[0].client_ids.len(), 3);
        assert_eq!(groups[0].score, 1.0);
        assert!(groups[0].reason.contains("same email") && groups[0].reason.contains("same phone"));
        assert_eq!(groups[1].client_ids, vec![clients[3].id, clients[4].id]);
        assert!(groups[1].reason.contains("similar name"));
    }

    #[test]
    fn jaro_winkler_known_values() {
        assert!((jaro_winkler("martha", "marhta") - 0.961).abs() < 0.001);
        assert_eq!(jaro_winkler("same", "same"), 1.0);
        assert!(jaro_winkler("ann smith", "bob jones") < 0.6);
    }
}
