//! A record other than application data on a kernel TLS socket.
//!
//! Once the kernel decrypts, a plain receive that meets an alert or a handshake record
//! fails with `EIO` rather than hand it over as data. Such a record is read with one
//! recvmsg carrying room for a control message: the kernel answers with the record's
//! content type (`TLS_GET_RECORD_TYPE`) and its decrypted body.

use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::Fixed;

use libc::{SOL_TLS, TLS_GET_RECORD_TYPE};

const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const CLOSE_NOTIFY: u8 = 0;
const KEY_UPDATE: u8 = 24;

/// The body kept of a control record: an alert is 2 bytes, a KeyUpdate 5.
const BODY: usize = 64;

/// What a control record said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ControlRecord {
    /// The peer's close_notify: it sends nothing more.
    CloseNotify,
    /// Any other alert (level, description): the peer ends the connection in error.
    Alert(u8, u8),
    /// A TLS 1.3 KeyUpdate: the peer's next records use a new key.
    KeyUpdate,
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
            (Some(HANDSHAKE), [KEY_UPDATE, ..]) => ControlRecord::KeyUpdate,
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
