//! Cuts a stream of tokens into sentences, so that the first sentence is spoken while the
//! model still writes the rest.

/// Characters that end a sentence (when followed by a space or the end of the reply).
const ENDS: [char; 3] = ['.', '!', '?'];
/// A clause longer than this is spoken at its next comma, semicolon or colon (a long first
/// sentence would delay the first audio).
const LONG_CLAUSE: usize = 120;
/// A text longer than this is spoken at its next space whatever it is.
const HARD_LIMIT: usize = 300;
/// Words whose period does not end a sentence.
const ABBREVIATIONS: [&str; 9] = [
    "mr.", "mrs.", "ms.", "dr.", "st.", "vs.", "etc.", "no.", "approx.",
];

/// Whether the period ending `word` (the text since the last space, period included) belongs
/// to an abbreviation: a listed one, or initials like "a.m." and "e.g.".
fn abbreviation(word: &str) -> bool {
    let w = word.to_lowercase();
    ABBREVIATIONS.contains(&w.as_str()) || (w.len() <= 5 && w.matches('.').count() >= 2)
}

/// Tokens in, sentences out.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: String,
}

impl Splitter {
    /// Adds a token; returns the sentences it completed.
    pub fn push(&mut self, token: &str) -> Vec<String> {
        self.buf.push_str(token);
        let mut out = Vec::new();
        while let Some(end) = self.cut() {
            let sentence: String = self.buf.drain(..end).collect();
            let s = sentence.trim();
            if !s.is_empty() {
                out.push(s.to_string());
            }
        }
        out
    }

    /// What is left at the end of the reply.
    pub fn finish(&mut self) -> Option<String> {
        let s = std::mem::take(&mut self.buf);
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    }

    /// Where the first complete sentence of the buffer ends (byte index after its last
    /// character), if one does.
    fn cut(&self) -> Option<usize> {
        let b = &self.buf;
        let mut chars = b.char_indices().peekable();
        let mut soft = None;
        while let Some((i, c)) = chars.next() {
            let next = chars.peek().map(|(_, n)| *n);
            let after = i + c.len_utf8();
            // "3.5" and "e.g." inside a word are not ends: an end is followed by a space.
            if ENDS.contains(&c) && next.is_some_and(char::is_whitespace) && after > 1 {
                let word_start = b[..i].rfind(char::is_whitespace).map_or(0, |w| w + 1);
                if c != '.' || !abbreviation(&b[word_start..after]) {
                    return Some(after);
                }
            }
            if matches!(c, ',' | ';' | ':') && next.is_some_and(char::is_whitespace) {
                soft = Some(after);
            }
            if soft.is_some() && after > LONG_CLAUSE {
                return soft;
            }
            if c.is_whitespace() && after > HARD_LIMIT {
                return Some(after);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(tokens: &[&str]) -> Vec<String> {
        let mut s = Splitter::default();
        let mut out: Vec<String> = tokens.iter().flat_map(|t| s.push(t)).collect();
        out.extend(s.finish());
        out
    }

    #[test]
    fn sentences_come_out_as_soon_as_they_end() {
        let mut s = Splitter::default();
        assert!(s.push("Hello").is_empty());
        assert!(s.push("!").is_empty(), "the end needs the space after it");
        assert_eq!(s.push(" How can"), ["Hello!"]);
        assert!(s.push(" I help?").is_empty());
        assert_eq!(s.finish().as_deref(), Some("How can I help?"));
        assert_eq!(
            split(&[
                "It costs 3.5 dollars. ",
                "Open at 9",
                " a.m. today",
                ". Ask Dr. Who."
            ]),
            [
                "It costs 3.5 dollars.",
                "Open at 9 a.m. today.",
                "Ask Dr. Who."
            ]
        );
        assert_eq!(split(&["  ", "\n"]), Vec::<String>::new());
    }

    #[test]
    fn long_clauses_are_cut_at_a_comma_and_endless_text_at_a_space() {
        let long = format!("{}, and then more", "word ".repeat(30));
        let out = split(&[&long]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].ends_with(','));
        let endless = "word ".repeat(100);
        let out = split(&[&endless]);
        // Cut at the first space past the limit.
        assert!(
            out.len() >= 2 && out.iter().all(|s| s.len() <= HARD_LIMIT + 5),
            "{out:?}"
        );
        assert_eq!(out.join(" "), endless.trim());
    }
}
