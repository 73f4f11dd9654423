//! The netlink wire format nf_tables speaks: message headers, attributes, and the uapi numbers
//! (from `linux/netlink.h`, `linux/netfilter/nfnetlink.h` and `linux/netfilter/nf_tables.h`).

/// An attribute or message payload that does not fit netlink's 16-bit attribute length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLong;

pub(crate) const NLM_F_REQUEST: u16 = 1;
pub(crate) const NLM_F_ACK: u16 = 4;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;

pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 16;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 17;
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;

pub(crate) const NFT_MSG_NEWTABLE: u16 = 0;
pub(crate) const NFT_MSG_DELTABLE: u16 = 2;
pub(crate) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(crate) const NFT_MSG_DELCHAIN: u16 = 5;
pub(crate) const NFT_MSG_NEWRULE: u16 = 6;
pub(crate) const NFT_MSG_DELRULE: u16 = 8;
pub(crate) const NFT_MSG_NEWSET: u16 = 9;
pub(crate) const NFT_MSG_DELSET: u16 = 11;
pub(crate) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(crate) const NFT_MSG_DELSETELEM: u16 = 14;
pub(crate) const NFT_MSG_GETGEN: u16 = 16;

pub(crate) const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_EXPR_NAME: u16 = 1;
pub(crate) const NFTA_EXPR_DATA: u16 = 2;

pub(crate) const NFTA_TABLE_NAME: u16 = 1;

pub(crate) const NFTA_CHAIN_TABLE: u16 = 1;
pub(crate) const NFTA_CHAIN_NAME: u16 = 3;
pub(crate) const NFTA_CHAIN_HOOK: u16 = 4;
pub(crate) const NFTA_CHAIN_POLICY: u16 = 5;
pub(crate) const NFTA_CHAIN_TYPE: u16 = 7;
pub(crate) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(crate) const NFTA_HOOK_PRIORITY: u16 = 2;

pub(crate) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
pub(crate) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(crate) const NFTA_RULE_USERDATA: u16 = 7;
/// libnftnl's user-data tag for a rule comment (`NFTNL_UDATA_RULE_COMMENT`).
pub(crate) const UDATA_RULE_COMMENT: u8 = 0;

pub(crate) const NFTA_SET_TABLE: u16 = 1;
pub(crate) const NFTA_SET_NAME: u16 = 2;
pub(crate) const NFTA_SET_FLAGS: u16 = 3;
pub(crate) const NFTA_SET_KEY_TYPE: u16 = 4;
pub(crate) const NFTA_SET_KEY_LEN: u16 = 5;
pub(crate) const NFTA_SET_DATA_TYPE: u16 = 6;
pub(crate) const NFTA_SET_DATA_LEN: u16 = 7;
pub(crate) const NFTA_SET_DESC: u16 = 9;
pub(crate) const NFTA_SET_ID: u16 = 10;
pub(crate) const NFTA_SET_TIMEOUT: u16 = 11;
pub(crate) const NFTA_SET_USERDATA: u16 = 13;
pub(crate) const NFTA_SET_DESC_CONCAT: u16 = 2;
pub(crate) const NFTA_SET_FIELD_LEN: u16 = 1;
pub(crate) const NFT_SET_ANONYMOUS: u32 = 1;
pub(crate) const NFT_SET_CONSTANT: u32 = 2;
pub(crate) const NFT_SET_INTERVAL: u32 = 4;
pub(crate) const NFT_SET_MAP: u32 = 8;
pub(crate) const NFT_SET_TIMEOUT: u32 = 0x10;
pub(crate) const NFT_SET_EVAL: u32 = 0x20;
pub(crate) const NFT_SET_CONCAT: u32 = 0x80;

pub(crate) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(crate) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(crate) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(crate) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(crate) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(crate) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(crate) const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
pub(crate) const NFTA_SET_ELEM_USERDATA: u16 = 6;
pub(crate) const NFTA_SET_ELEM_KEY_END: u16 = 10;
pub(crate) const NFT_SET_ELEM_INTERVAL_END: u32 = 1;

pub(crate) const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_DATA_VERDICT: u16 = 2;
pub(crate) const NFTA_VERDICT_CODE: u16 = 1;
pub(crate) const NFTA_VERDICT_CHAIN: u16 = 2;
pub(crate) const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

/// Builds netlink messages into one buffer (a batch is several messages back to back).
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// The bytes written so far.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Starts a netfilter message (`nlmsghdr` + `nfgenmsg`); returns where it starts.
    pub(crate) fn begin(
        &mut self,
        kind: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    /// Ends the message started at `start` by writing its length.
    pub(crate) fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// An attribute with raw bytes.
    pub(crate) fn put(&mut self, kind: u16, data: &[u8]) -> Result<(), TooLong> {
        let len = u16::try_from(NLA_HDRLEN + data.len()).map_err(|_| TooLong)?;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    /// A big-endian 32-bit attribute, as nf_tables wants every number.
    pub(crate) fn put_u32(&mut self, kind: u16, value: u32) -> Result<(), TooLong> {
        self.put(kind, &value.to_be_bytes())
    }

    /// A big-endian 64-bit attribute.
    pub(crate) fn put_u64(&mut self, kind: u16, value: u64) -> Result<(), TooLong> {
        self.put(kind, &value.to_be_bytes())
    }

    /// A NUL-terminated string attribute.
    pub(crate) fn put_str(&mut self, kind: u16, value: &str) -> Result<(), TooLong> {
        let mut bytes = Vec::with_capacity(value.len() + 1);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        self.put(kind, &bytes)
    }

    /// Opens a nested attribute; close it with [`Writer::close`].
    pub(crate) fn open(&mut self, kind: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Closes the nested attribute opened at `start`.
    pub(crate) fn close(&mut self, start: usize) -> Result<(), TooLong> {
        let len = u16::try_from(self.buf.len() - start).map_err(|_| TooLong)?;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        Ok(())
    }

    /// Bytes already encoded elsewhere (whole attributes, so already aligned).
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

/// One message of a kernel reply: its type, sequence number and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply<'a> {
    pub(crate) kind: u16,
    pub(crate) seq: u32,
    pub(crate) payload: &'a [u8],
}

/// Splits a datagram the kernel sent into its messages; `None` if a header is cut short.
pub(crate) fn replies(mut data: &[u8]) -> Option<Vec<Reply<'_>>> {
    let mut out = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return None;
        }
        out.push(Reply {
            kind: u16::from_ne_bytes(data[4..6].try_into().ok()?),
            seq: u32::from_ne_bytes(data[8..12].try_into().ok()?),
            payload: &data[NLMSG_HDRLEN..len],
        });
        data = &data[align(len).min(data.len())..];
    }
    Some(out)
}

/// The attributes in `data` as (type without flag bits, payload); `None` if one is cut short.
pub(crate) fn attributes(mut data: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while data.len() >= NLA_HDRLEN {
        let len = usize::from(u16::from_ne_bytes(data[0..2].try_into().ok()?));
        let kind = u16::from_ne_bytes(data[2..4].try_into().ok()?) & 0x3fff;
        if len < NLA_HDRLEN || len > data.len() {
            return None;
        }
        out.push((kind, &data[NLA_HDRLEN..len]));
        data = &data[align(len).min(data.len())..];
    }
    Some(out)
}

/// The error code of an `NLMSG_ERROR` payload: 0 for an acknowledgement, else `-errno`.
pub(crate) fn error_code(payload: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?))
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_carry_their_length() {
        let mut w = Writer::default();
        let nest = w.open(3);
        w.put_str(1, "ab").expect("fits");
        w.put_u32(2, 0x0102_0304).expect("fits");
        w.close(nest).expect("fits");
        assert_eq!(
            w.into_bytes(),
            vec![
                20, 0, 3, 0x80, // nest: 4 + 8 + 8 bytes, NLA_F_NESTED
                7, 0, 1, 0, b'a', b'b', 0, 0, // "ab\0" + 1 byte of padding
                8, 0, 2, 0, 1, 2, 3, 4, // big-endian number
            ]
        );
    }

    #[test]
    fn attributes_read_back_what_was_written() {
        let mut w = Writer::default();
        w.put_str(1, "ab").expect("fits");
        let nest = w.open(2);
        w.put_u32(3, 7).expect("fits");
        w.close(nest).expect("fits");
        let bytes = w.into_bytes();
        let attrs = attributes(&bytes).expect("well formed");
        assert_eq!(attrs[0], (1, &b"ab\0"[..]));
        assert_eq!(attrs[1].0, 2, "nested flag stripped");
        assert_eq!(attributes(attrs[1].1), Some(vec![(3, &[0, 0, 0, 7][..])]));
        assert!(attributes(&bytes[..5]).is_none());
    }

    #[test]
    fn an_attribute_over_64k_is_refused() {
        let mut w = Writer::default();
        assert_eq!(w.put(1, &vec![0; 70_000]), Err(TooLong));
    }

    #[test]
    fn replies_are_split_and_a_cut_header_is_refused() {
        let mut w = Writer::default();
        let a = w.begin(NLMSG_ERROR, 0, 7, 0, 0);
        w.end(a);
        let b = w.begin(NLMSG_ERROR, 0, 8, 0, 0);
        w.end(b);
        let bytes = w.into_bytes();
        let got = replies(&bytes).expect("well formed");
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 8]);
        assert!(replies(&bytes[..bytes.len() - 2]).is_none());
    }
}
