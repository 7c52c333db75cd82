//! "Did you mean" suggestions by edit distance.

/// Levenshtein distance in bytes (keys are ASCII).
pub fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a likely typo:
/// at most half the word's length away (at least 2) and not a complete rewrite of
/// either word, ties going to the first.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.len() / 2).max(2);
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, c)| *d <= limit && *d < word.len() && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("start_command", "start_cmd"), 4);
        assert_eq!(distance("same", "same"), 0);
    }

    #[test]
    fn closest_picks_the_nearest_likely_typo() {
        let c = ["socket", "start_cmd", "query_cmd"];
        assert_eq!(closest("start_command", c), Some("start_cmd"));
        assert_eq!(closest("sockt", c), Some("socket"));
        assert_eq!(closest("querycmd", c), Some("query_cmd"));
    }

    #[test]
    fn closest_refuses_far_words() {
        assert_eq!(closest("timeout", ["socket", "fail_open"]), None);
        assert_eq!(closest("x", ["socket"]), None);
        assert_eq!(closest("c", ["a", "b"]), None);
    }
}
