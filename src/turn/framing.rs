//! TURN over a byte stream (TCP or TLS, RFC 8656 §11.5): STUN messages and ChannelData
//! messages follow each other on the stream, ChannelData padded to a multiple of four bytes.
//! [`StreamFramer`] cuts what arrives into whole messages, within a bounded buffer.

/// The largest message accepted from the stream: a STUN header and 64 KiB of attributes, or a
/// ChannelData header and 64 KiB of data, padded.
pub const MAX_FRAME: usize = 4 + 65_535 + 3 + 20;

/// Why a stream can no longer be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    /// Neither STUN nor ChannelData: the stream is out of step (or not a TURN server).
    NotTurn,
}

/// The length of the message that starts `head` (at least 4 bytes), padding included on a
/// stream: STUN is 20 + its length, ChannelData 4 + its length rounded up to four.
fn frame_len(head: &[u8], stream: bool) -> Result<usize, FramingError> {
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    match head[0] >> 6 {
        0 => Ok(20 + len),
        1 if stream => Ok(4 + len.next_multiple_of(4)),
        1 => Ok(4 + len),
        _ => Err(FramingError::NotTurn),
    }
}

/// Bytes read from the stream and not yet a whole message.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
    start: usize,
}

impl StreamFramer {
    /// Append bytes read from the stream. The buffer never holds more than one incomplete
    /// message plus what one read brought.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > MAX_FRAME {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message (ChannelData with its padding cut off), if one is complete.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FramingError> {
        let rest = &self.buf[self.start..];
        if rest.len() < 4 {
            return Ok(None);
        }
        let n = frame_len(rest, true)?;
        if rest.len() < n {
            return Ok(None);
        }
        let at = self.start;
        self.start += n;
        let unpadded = frame_len(&self.buf[at..], false)?;
        Ok(Some(&self.buf[at..at + unpadded]))
    }

    /// Bytes held.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// A ChannelData message: channel number, length, data, and on a stream the padding.
pub fn channel_data(channel: u16, data: &[u8], stream: bool) -> Vec<u8> {
    let padded = if stream {
        data.len().next_multiple_of(4)
    } else {
        data.len()
    };
    let mut m = Vec::with_capacity(4 + padded);
    m.extend_from_slice(&channel.to_be_bytes());
    m.extend_from_slice(&(data.len() as u16).to_be_bytes());
    m.extend_from_slice(data);
    m.resize(4 + padded, 0);
    m
}

/// A ChannelData message's channel number and data (`None` if it is not one or is short).
pub fn parse_channel_data(bytes: &[u8]) -> Option<(u16, &[u8])> {
    if bytes.len() < 4 || bytes[0] >> 6 != 1 {
        return None;
    }
    let channel = u16::from_be_bytes([bytes[0], bytes[1]]);
    let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    Some((channel, bytes.get(4..4 + len)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_joined() {
        let stun = crate::turn::stun::MessageBuilder::new(0x0103, &[9; 12])
            .attr(0x8022, b"abc")
            .finish();
        let cd = channel_data(0x4001, b"hello", true);
        assert_eq!(cd.len(), 12);
        let mut stream = Vec::new();
        stream.extend_from_slice(&cd);
        stream.extend_from_slice(&stun);
        stream.extend_from_slice(&channel_data(0x4002, b"", true));
        // Byte by byte, then all at once: the same frames.
        for step in [1usize, 5, stream.len()] {
            let mut f = StreamFramer::default();
            let mut frames: Vec<Vec<u8>> = Vec::new();
            for piece in stream.chunks(step) {
                f.push(piece);
                while let Some(m) = f.next_frame().unwrap() {
                    frames.push(m.to_vec());
                }
            }
            assert_eq!(frames.len(), 3, "step {step}");
            assert_eq!(
                parse_channel_data(&frames[0]),
                Some((0x4001, &b"hello"[..]))
            );
            assert_eq!(frames[1], stun);
            assert_eq!(parse_channel_data(&frames[2]), Some((0x4002, &b""[..])));
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn junk_is_an_error_and_short_is_none() {
        let mut f = StreamFramer::default();
        f.push(&[0xff, 0, 0, 0]);
        assert_eq!(f.next_frame(), Err(FramingError::NotTurn));
        assert_eq!(parse_channel_data(&[0x40, 1, 0, 9, 1]), None);
        assert_eq!(parse_channel_data(&[0x00, 1, 0, 0]), None);
        assert_eq!(channel_data(0x4000, b"abc", false).len(), 7);
    }
}
