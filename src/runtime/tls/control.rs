//! Records other than application data on a kernel TLS socket.
//!
//! Once the kernel decrypts, a plain receive that meets an alert or a handshake record
//! fails with `EIO` rather than hand it over as data. Such a record is read with one
//! recvmsg carrying room for a control message: the kernel answers with the record's
//! content type (`TLS_GET_RECORD_TYPE`) and its decrypted body. One is sent the same way:
//! a sendmsg whose control message (`TLS_SET_RECORD_TYPE`) names the content type, and
//! the kernel seals the body into a record of that type.

use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::Fixed;

use libc::{SOL_TLS, TLS_GET_RECORD_TYPE, TLS_SET_RECORD_TYPE};

const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const CLOSE_NOTIFY: u8 = 0;
const KEY_UPDATE: u8 = 24;
/// The alert level of a close_notify (RFC 8446 6: "warning").
const WARNING: u8 = 1;
/// KeyUpdateRequest (RFC 8446 4.6.3).
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;

/// The body kept of a control record: an alert is 2 bytes, a KeyUpdate 5.
const BODY: usize = 64;

/// What a control record said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ControlRecord {
    /// The peer's close_notify: it sends nothing more.
    CloseNotify,
    /// Any other alert (level, description): the peer ends the connection in error.
    Alert(u8, u8),
    /// A TLS 1.3 KeyUpdate: the peer's next records use a new key; `requested`, it asks
    /// for ours to change too.
    KeyUpdate { requested: bool },
    /// Another record type, or one the kernel did not label.
    Other(Option<u8>),
}

/// The memory of one recvmsg in flight: header, iovec, control and body buffers. Boxed,
/// so it stays put until the completion.
pub(crate) struct ControlRead {
    header: libc::msghdr,
    iov: libc::iovec,
    control: [u64; 8],
    body: [u8; BODY],
}

impl ControlRead {
    pub fn new() -> Box<Self> {
        // SAFETY: msghdr, iovec and the arrays are plain data for which all-zero bytes are
        // valid (null pointers, zero lengths).
        let mut read: Box<Self> = Box::new(unsafe { std::mem::zeroed() });
        read.iov.iov_base = read.body.as_mut_ptr().cast();
        read.iov.iov_len = BODY;
        read.header.msg_iov = &raw mut read.iov;
        read.header.msg_iovlen = 1;
        read.header.msg_control = read.control.as_mut_ptr().cast();
        read.header.msg_controllen = std::mem::size_of_val(&read.control);
        read
    }

    /// The recvmsg for `fd`; it writes into this, which must stay put until the
    /// completion.
    pub fn entry(&mut self, fd: Fixed) -> squeue::Entry {
        opcode::RecvMsg::new(fd, &raw mut self.header).build()
    }

    /// Reads what a completed recvmsg of `len` body bytes brought.
    pub fn record(&self, len: usize) -> ControlRecord {
        let body = &self.body[..len.min(BODY)];
        let kind = self.record_type();
        match (kind, body) {
            (Some(ALERT), [_, CLOSE_NOTIFY, ..]) => ControlRecord::CloseNotify,
            (Some(ALERT), [level, description, ..]) => ControlRecord::Alert(*level, *description),
            // The whole record is one KeyUpdate: type, a 3-byte length of 1, the request.
            (
                Some(HANDSHAKE),
                [
                    KEY_UPDATE,
                    0,
                    0,
                    1,
                    request @ (UPDATE_NOT_REQUESTED | UPDATE_REQUESTED),
                ],
            ) => ControlRecord::KeyUpdate {
                requested: *request == UPDATE_REQUESTED,
            },
            _ => ControlRecord::Other(kind),
        }
    }

    /// The content type the kernel put in the control message.
    fn record_type(&self) -> Option<u8> {
        let header = &self.header;
        // SAFETY: the header points at our own control buffer, whose length the kernel set
        // to what it wrote; CMSG_FIRSTHDR and CMSG_NXTHDR stay inside it, and CMSG_DATA of a
        // header they return points inside it too.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(header);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == SOL_TLS
                    && (*cmsg).cmsg_type == TLS_GET_RECORD_TYPE
                    && (*cmsg).cmsg_len as usize >= libc::CMSG_LEN(1) as usize
                {
                    return Some(*libc::CMSG_DATA(cmsg));
                }
                cmsg = libc::CMSG_NXTHDR(header, cmsg);
            }
        }
        None
    }
}

/// What a control record sent carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// Our close_notify: we send nothing more.
    CloseNotify,
    /// Our TLS 1.3 KeyUpdate, asking nothing of the peer: our next records use a new key.
    KeyUpdate,
}

/// The memory of one sendmsg of a control record in flight: header, iovec, control message
/// and body. Boxed, so it stays put until the completion.
pub(crate) struct ControlWrite {
    header: libc::msghdr,
    iov: libc::iovec,
    control: [u64; 4],
    body: [u8; 8],
}

impl ControlWrite {
    pub fn new(record: Outgoing) -> Box<Self> {
        // SAFETY: msghdr, iovec and the arrays are plain data for which all-zero bytes are
        // valid (null pointers, zero lengths).
        let mut write: Box<Self> = Box::new(unsafe { std::mem::zeroed() });
        let (kind, body): (u8, &[u8]) = match record {
            Outgoing::CloseNotify => (ALERT, &[WARNING, CLOSE_NOTIFY]),
            Outgoing::KeyUpdate => (HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED]),
        };
        write.body[..body.len()].copy_from_slice(body);
        write.iov.iov_base = write.body.as_mut_ptr().cast();
        write.iov.iov_len = body.len();
        write.header.msg_iov = &raw mut write.iov;
        write.header.msg_iovlen = 1;
        write.header.msg_control = write.control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        write.header.msg_controllen = unsafe { libc::CMSG_SPACE(1) } as usize;
        // SAFETY: the control buffer (32 bytes, 8-aligned) holds CMSG_SPACE(1) = 24 bytes, so
        // the first header CMSG_FIRSTHDR returns and its one byte of data lie inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const write.header);
            (*cmsg).cmsg_level = SOL_TLS;
            (*cmsg).cmsg_type = TLS_SET_RECORD_TYPE;
            (*cmsg).cmsg_len = libc::CMSG_LEN(1) as usize;
            *libc::CMSG_DATA(cmsg) = kind;
        }
        write
    }

    /// The body's length: what a complete send returns.
    pub fn len(&self) -> usize {
        self.iov.iov_len
    }

    /// The sendmsg for `fd`; it reads from this, which must stay put until the completion.
    pub fn entry(&self, fd: Fixed) -> squeue::Entry {
        opcode::SendMsg::new(fd, &raw const self.header).build()
    }

    #[cfg(test)]
    fn parts(&self) -> (u8, &[u8]) {
        let kind = self.control_bytes()[16];
        (kind, &self.body[..self.iov.iov_len])
    }

    #[cfg(test)]
    fn control_bytes(&self) -> &[u8] {
        // SAFETY: the control buffer is 32 initialised bytes.
        unsafe { std::slice::from_raw_parts(self.control.as_ptr().cast::<u8>(), 32) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_of(kind: u8, body: &[u8]) -> ControlRecord {
        let mut read = ControlRead::new();
        read.body[..body.len()].copy_from_slice(body);
        // SAFETY: as in ControlWrite::new: the header points at the read's own buffer.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const read.header);
            (*cmsg).cmsg_level = SOL_TLS;
            (*cmsg).cmsg_type = TLS_GET_RECORD_TYPE;
            (*cmsg).cmsg_len = libc::CMSG_LEN(1) as usize;
            *libc::CMSG_DATA(cmsg) = kind;
        }
        // SAFETY: CMSG_SPACE only computes a size.
        read.header.msg_controllen = unsafe { libc::CMSG_SPACE(1) } as usize;
        read.record(body.len())
    }

    #[test]
    fn a_key_update_is_read_with_its_request_and_nothing_else_passes_for_one() {
        assert_eq!(
            read_of(HANDSHAKE, &[24, 0, 0, 1, 0]),
            ControlRecord::KeyUpdate { requested: false }
        );
        assert_eq!(
            read_of(HANDSHAKE, &[24, 0, 0, 1, 1]),
            ControlRecord::KeyUpdate { requested: true }
        );
        // A request value the RFC does not define, a wrong length, two messages in one.
        for body in [
            &[24, 0, 0, 1, 2][..],
            &[24, 0, 0, 2, 0, 0],
            &[24, 0, 0, 1, 0, 24, 0, 0, 1, 0],
        ] {
            assert_eq!(
                read_of(HANDSHAKE, body),
                ControlRecord::Other(Some(HANDSHAKE))
            );
        }
        assert_eq!(read_of(ALERT, &[1, 0]), ControlRecord::CloseNotify);
        assert_eq!(read_of(ALERT, &[2, 40]), ControlRecord::Alert(2, 40));
    }

    #[test]
    fn control_records_sent_carry_their_type_in_the_control_message() {
        let close = ControlWrite::new(Outgoing::CloseNotify);
        assert_eq!(close.parts(), (ALERT, &[1, 0][..]));
        assert_eq!(close.len(), 2);
        let update = ControlWrite::new(Outgoing::KeyUpdate);
        assert_eq!(update.parts(), (HANDSHAKE, &[24, 0, 0, 1, 0][..]));
        let control = close.control_bytes();
        assert_eq!(
            &control[..16],
            &[17, 0, 0, 0, 0, 0, 0, 0, 0x1a, 0x01, 0, 0, 1, 0, 0, 0][..],
            "cmsg_len 17, SOL_TLS (282), TLS_SET_RECORD_TYPE (1)"
        );
        assert_eq!(close.header.msg_controllen, 24);
    }
}
