//! The messages a run sends: stamped binary filler of a chosen size, or real messages from
//! a file with the stamp in a field (see [`templates`](crate::templates)).

use std::sync::Arc;

use ringws::proto::OpCode;

use crate::payload::{Corrupt, Stamp};
use crate::templates::Templates;

#[derive(Clone, Debug)]
pub enum Payloads {
    /// Binary messages of `size` bytes: the stamp, then filler derived from the sequence.
    Stamped { size: usize },
    /// Text messages from a file, the stamp in a field the server echoes.
    Templates(Arc<Templates>),
}

impl Payloads {
    /// Appends the payload that carries `stamp` and says how to send it.
    pub fn write(&self, stamp: &Stamp, out: &mut Vec<u8>) -> OpCode {
        match self {
            Payloads::Stamped { size } => {
                stamp.write(*size, out);
                OpCode::Binary
            }
            Payloads::Templates(templates) => {
                templates.write(stamp, out);
                OpCode::Text
            }
        }
    }

    /// About how long a message is, to reckon how many fit in a queue.
    pub fn typical_len(&self) -> usize {
        match self {
            Payloads::Stamped { size } => (*size).max(crate::payload::MIN_SIZE),
            Payloads::Templates(templates) => templates.typical_len(),
        }
    }

    /// Reads the stamp of a message that arrived, checking the whole message.
    pub fn read(&self, opcode: OpCode, message: &[u8]) -> Result<Stamp, Corrupt> {
        match (self, opcode) {
            (Payloads::Stamped { size }, OpCode::Binary) => Stamp::read(message, *size),
            (Payloads::Templates(templates), OpCode::Text) => templates.read(message),
            _ => Err(Corrupt::Kind),
        }
    }
}
