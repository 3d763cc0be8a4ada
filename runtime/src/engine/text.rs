//! Turns the token byte stream into text safe to stream: holds back a UTF-8
//! character split across tokens and any tail that may begin a stop sequence.

/// Streaming detokenizer with stop-sequence detection.
#[derive(Debug)]
pub struct TextStream {
    stops: Vec<String>,
    pending_bytes: Vec<u8>,
    /// Decoded text not yet released because it could start a stop sequence.
    held: String,
}

/// What one appended piece produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text to send now (may be empty while text is held back).
    Text(String),
    /// A stop sequence matched: the text before it, which ends the answer.
    Stopped(String),
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            stops,
            pending_bytes: Vec::new(),
            held: String::new(),
        }
    }

    /// Adds the bytes of one token.
    pub fn push(&mut self, bytes: &[u8]) -> Piece {
        self.pending_bytes.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending_bytes) {
            Ok(s) => s.len(),
            // An incomplete sequence at the end waits for the next token; an
            // invalid one in the middle is replaced rather than stalling.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => {
                let text = String::from_utf8_lossy(&self.pending_bytes).into_owned();
                self.pending_bytes.clear();
                return self.release(text);
            }
        };
        let rest = self.pending_bytes.split_off(valid);
        let text =
            String::from_utf8(std::mem::replace(&mut self.pending_bytes, rest)).unwrap_or_default();
        self.release(text)
    }

    /// Releases whatever is still held at the end of generation.
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        out.push_str(&String::from_utf8_lossy(&std::mem::take(
            &mut self.pending_bytes,
        )));
        out
    }

    fn release(&mut self, text: String) -> Piece {
        self.held.push_str(&text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s)).min() {
            let before = self.held[..at].to_string();
            self.held.clear();
            return Piece::Stopped(before);
        }
        let keep = self
            .stops
            .iter()
            .map(|s| partial_suffix_len(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        Piece::Text(out)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`,
/// on a char boundary.
fn partial_suffix_len(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && stop.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(stream: &mut TextStream, pieces: &[&[u8]]) -> (String, bool) {
        let mut out = String::new();
        for p in pieces {
            match stream.push(p) {
                Piece::Text(t) => out.push_str(&t),
                Piece::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&stream.finish());
        (out, false)
    }

    #[test]
    fn a_character_split_across_tokens_is_emitted_whole() {
        let mut s = TextStream::new(vec![]);
        let euro = "€".as_bytes();
        assert_eq!(s.push(&euro[..1]), Piece::Text(String::new()));
        assert_eq!(s.push(&euro[1..]), Piece::Text("€".into()));
    }

    #[test]
    fn a_stop_sequence_split_across_tokens_ends_the_text_before_it() {
        let mut s = TextStream::new(vec!["\nUser:".into()]);
        let (text, stopped) = collect(&mut s, &[b"Paris.", b"\nUs", b"er:", b" more"]);
        assert_eq!(text, "Paris.");
        assert!(stopped);
    }

    #[test]
    fn text_that_only_looks_like_a_stop_prefix_is_released_later() {
        let mut s = TextStream::new(vec!["END".into()]);
        assert_eq!(s.push(b"the EN"), Piece::Text("the ".into()));
        assert_eq!(s.push(b"D? no"), Piece::Stopped(String::new()));
        let mut s = TextStream::new(vec!["END".into()]);
        let (text, stopped) = collect(&mut s, &[b"the EN", b"TRY"]);
        assert_eq!((text.as_str(), stopped), ("the ENTRY", false));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_stalled() {
        let mut s = TextStream::new(vec![]);
        assert_eq!(s.push(&[0xff, b'a']), Piece::Text("\u{fffd}a".into()));
    }
}
