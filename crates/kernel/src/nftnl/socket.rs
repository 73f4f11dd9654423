//! Sending an encoded batch inside a network namespace and reading every acknowledgement.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use super::wire::{
    self, NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR,
};
use super::{Encoded, NftError};
use crate::netns;

/// How long to wait for the kernel's answer before giving up on a transaction.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Receive-buffer room per acknowledgement: each is its own small socket buffer, whose kernel
/// accounting (not its 36 bytes) is what fills the buffer; `nft` budgets the same per command.
const ACK_ROOM: usize = 1024;

/// Sends the batch from a thread inside `netns` and reads the kernel's answer to every message.
pub(crate) fn send_batch(netns: &str, batch: &Encoded) -> Result<(), NftError> {
    in_netns(netns, || exchange(batch))
}

/// Runs `f` on a thread of its own that has entered `netns` (sockets it opens live there).
pub(crate) fn in_netns<T: Send>(
    netns: &str,
    f: impl FnOnce() -> Result<T, NftError> + Send,
) -> Result<T, NftError> {
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            netns::enter(netns).map_err(NftError::Enter)?;
            f()
        });
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn exchange(batch: &Encoded) -> Result<(), NftError> {
    let send = batch.bytes.len() + 64 * 1024;
    let receive = (batch.what.len() + 16) * ACK_ROOM + 256 * 1024;
    let socket = open(send, receive)?;
    let answer = send_and_read(&socket, batch);
    // Closing an nf_tables socket after a commit that deleted anything takes the kernel
    // 10-15 ms (it waits out the transaction's deferred destruction under the commit mutex),
    // and the rules are in effect once the answers are read: so the socket is closed on a
    // thread of its own, off the caller's path. If no thread can be started, the closure
    // (and the socket with it) is dropped here instead.
    let _ = std::thread::Builder::new()
        .name("nftnl-close".to_owned())
        .spawn(move || drop(socket));
    answer
}

fn send_and_read(socket: &Socket, batch: &Encoded) -> Result<(), NftError> {
    socket
        .send(&batch.bytes, 0)
        .map_err(io_err("send the batch"))?;
    // The kernel processes a batch inside sendmsg, so its answers are queued before the
    // answer to this request: once it arrives, every answer to the batch has been read.
    let fence_seq = batch.first_seq + batch.what.len() as u32 + 2;
    let mut fence = wire::Writer::default();
    let start = fence.begin(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
        NLM_F_REQUEST | NLM_F_ACK,
        fence_seq,
        0,
        0,
    );
    fence.end(start);
    socket
        .send(&fence.into_bytes(), 0)
        .map_err(io_err("send the closing request"))?;

    let mut errors: BTreeMap<u32, i32> = BTreeMap::new();
    let mut acked = 0;
    let mut buf = vec![0u8; 1 << 20];
    'read: loop {
        let len = recv(socket, &mut buf)?;
        let replies = wire::replies(&buf[..len]).ok_or(NftError::MalformedReply { len })?;
        for reply in replies {
            if reply.kind != NLMSG_ERROR {
                continue;
            }
            let code = wire::error_code(reply.payload).ok_or(NftError::MalformedReply { len })?;
            if reply.seq == fence_seq {
                break 'read;
            }
            if reply.seq < batch.first_seq || reply.seq > fence_seq {
                return Err(NftError::MalformedReply { len });
            }
            if code == 0 {
                acked += 1;
            } else {
                errors.entry(reply.seq).or_insert(code);
            }
        }
    }
    if let Some((&seq, &code)) = errors.iter().next() {
        let source = io::Error::from_raw_os_error(-code);
        let index = seq.wrapping_sub(batch.first_seq + 1) as usize;
        return Err(match batch.what.get(index) {
            Some(what) => NftError::Rejected {
                index,
                seq,
                what: what.clone(),
                source,
            },
            None => NftError::BatchRejected { source },
        });
    }
    if acked != batch.what.len() {
        return Err(NftError::MissingAcks {
            acked,
            sent: batch.what.len(),
        });
    }
    Ok(())
}

/// A netfilter netlink socket connected to the kernel, with buffers of at least these sizes.
pub(crate) fn open(send: usize, receive: usize) -> Result<Socket, NftError> {
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io_err("open"))?;
    socket.bind_auto().map_err(io_err("bind"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(io_err("connect"))?;
    // Acknowledgements without a copy of each request, so a large batch's answers fit.
    socket
        .set_cap_ack(true)
        .map_err(io_err("set NETLINK_CAP_ACK"))?;
    // A batch is one datagram: the send buffer must hold it whole, and the receive buffer
    // every acknowledgement (root may raise both past the system limits, as nft does).
    let send = send.min(i32::MAX as usize);
    let receive = receive.min(i32::MAX as usize);
    setsockopt(&socket, sockopt::SndBufForce, &send).map_err(nix_err("set SO_SNDBUFFORCE"))?;
    setsockopt(&socket, sockopt::RcvBufForce, &receive).map_err(nix_err("set SO_RCVBUFFORCE"))?;
    let timeout = TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
    setsockopt(&socket, sockopt::ReceiveTimeout, &timeout).map_err(nix_err("set SO_RCVTIMEO"))?;
    Ok(socket)
}

/// Reads one datagram into `buf`, returning its length.
pub(crate) fn recv(socket: &Socket, buf: &mut Vec<u8>) -> Result<usize, NftError> {
    buf.clear();
    loop {
        match socket.recv(buf, 0) {
            Ok(len) => return Ok(len.min(buf.len())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read the kernel's answer")(e)),
        }
    }
}

pub(crate) fn io_err(step: &'static str) -> impl Fn(io::Error) -> NftError {
    move |source| NftError::Socket { step, source }
}

fn nix_err(step: &'static str) -> impl Fn(nix::Error) -> NftError {
    move |errno| NftError::Socket {
        step,
        source: io::Error::from(errno),
    }
}
