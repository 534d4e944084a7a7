//! Lineage (SPEC §6.3): what a credential obtained with another broker credential descends from.
//!
//! The `chain` names the lineage root and the most recent ancestors, so revoking any of
//! them kills the descendant, while the chain stays small however often it is renewed.

/// The most ids a `chain` holds: the lineage root plus the 7 most recent ancestors.
pub const MAX_CHAIN: usize = 8;

/// The chain of a credential obtained with the credential `parent_id` (whose own chain is
/// `parent_chain`): the parent's chain followed by the parent, trimmed to [`MAX_CHAIN`]
/// ids by dropping the oldest ancestors after the root.
pub fn child_chain(parent_id: &str, parent_chain: &[String]) -> Vec<String> {
    let total = parent_chain.len() + 1;
    let mut chain = Vec::with_capacity(total.min(MAX_CHAIN));
    if total <= MAX_CHAIN {
        chain.extend_from_slice(parent_chain);
    } else {
        // Root first, then the most recent ancestors; one slot is left for the parent.
        chain.push(parent_chain[0].clone());
        chain.extend_from_slice(&parent_chain[parent_chain.len() - (MAX_CHAIN - 2)..]);
    }
    chain.push(parent_id.to_string());
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn first_descendant_lists_its_parent_as_root() {
        assert_eq!(child_chain("c0", &[]), vec!["c0"]);
    }

    #[test]
    fn chain_grows_until_the_limit() {
        assert_eq!(child_chain("c3", &ids(0..3)), ids(0..4));
        let full = child_chain("c7", &ids(0..7));
        assert_eq!(full, ids(0..8));
        assert_eq!(full.len(), MAX_CHAIN);
    }

    #[test]
    fn long_lines_keep_the_root_and_the_most_recent_ancestors() {
        let chain = child_chain("c8", &ids(0..8));
        assert_eq!(chain.len(), MAX_CHAIN);
        assert_eq!(chain[0], "c0");
        assert_eq!(&chain[1..], &ids(2..9)[..]);

        // Renew 100 times: always the root plus the 7 latest.
        let mut chain: Vec<String> = Vec::new();
        for i in 0..100 {
            chain = child_chain(&format!("c{i}"), &chain);
            assert!(chain.len() <= MAX_CHAIN);
            assert_eq!(chain[0], "c0");
            assert_eq!(
                chain.last().map(String::as_str),
                Some(format!("c{i}").as_str())
            );
        }
        assert_eq!(&chain[1..], &ids(93..100)[..]);
    }
}
