//! Views of the four WireGuard messages: handshake initiation, handshake response, cookie
//! reply and transport data.
//!
//! The one owner of their byte layout, as the kernel's `messages.h` is for `noise.c`,
//! `cookie.c` and `receive.c`: sizes and type codes come from [`crate::messages`], field
//! positions are the [`field`] ranges, every multi-byte field is little-endian, and `noise`,
//! `cookie`, `session` and `device` read and write messages only through these views. Also
//! owned here: the acceptance rule of the kernel's `prepare_skb_header`
//! (`drivers/net/wireguard/receive.c`): the 4-byte header is read as one little-endian u32 that
//! must equal a type code, so the three reserved bytes must be zero, and the length must be
//! exact for the handshake messages and at least [`DATA_MIN_LEN`] for transport data. Type and
//! length are checked together, before any other byte is read ([`classify`]).
//!
//! Nothing here touches cryptography: `mac1_covered()`/`mac2_covered()` give the bytes the MACs
//! cover (for either handshake message through [`MacMessage`]), and the `_mut` accessors give
//! the fields to seal or open in place.

use core::fmt;

use super::bytes;
use super::{Error, Result};
use crate::messages::{
    COOKIE_LEN, COOKIE_NONCE_LEN, COOKIE_REPLY_LEN, DATA_MIN_LEN, HEADER_LEN, INITIATION_LEN, KEY_LEN, MESSAGE_DATA,
    MESSAGE_HANDSHAKE_COOKIE, MESSAGE_HANDSHAKE_INITIATION, MESSAGE_HANDSHAKE_RESPONSE, RESPONSE_LEN, TAG_LEN,
};

/// Where each field lies, as byte ranges from the start of the message (the kernel's
/// `messages.h` structs). The views read and write through these; code that needs an offset
/// itself (the plaintext range of a data message, say) takes it from here.
pub mod field {
    use core::ops::{Range, RangeFrom};

    use crate::messages::{
        COOKIE_LEN, COOKIE_NONCE_LEN, COUNTER_LEN, HEADER_LEN, INDEX_LEN, KEY_LEN, TAG_LEN, TIMESTAMP_LEN,
    };

    /// The header: the type code and three reserved zero bytes, read as one little-endian u32.
    pub const HEADER: Range<usize> = 0..HEADER_LEN;

    /// Handshake initiation (kernel `struct message_handshake_initiation`).
    pub mod initiation {
        use super::*;
        /// The initiator's index.
        pub const SENDER: Range<usize> = HEADER.end..HEADER.end + INDEX_LEN;
        /// The initiator's ephemeral public key.
        pub const EPHEMERAL: Range<usize> = SENDER.end..SENDER.end + KEY_LEN;
        /// The initiator's static public key, sealed.
        pub const STATIC: Range<usize> = EPHEMERAL.end..EPHEMERAL.end + KEY_LEN + TAG_LEN;
        /// The TAI64N timestamp, sealed.
        pub const TIMESTAMP: Range<usize> = STATIC.end..STATIC.end + TIMESTAMP_LEN + TAG_LEN;
        /// MAC1, over every byte before it.
        pub const MAC1: Range<usize> = TIMESTAMP.end..TIMESTAMP.end + COOKIE_LEN;
        /// MAC2, over every byte before it.
        pub const MAC2: Range<usize> = MAC1.end..MAC1.end + COOKIE_LEN;
    }

    /// Handshake response (kernel `struct message_handshake_response`).
    pub mod response {
        use super::*;
        /// The responder's index.
        pub const SENDER: Range<usize> = HEADER.end..HEADER.end + INDEX_LEN;
        /// The initiator's index, echoed.
        pub const RECEIVER: Range<usize> = SENDER.end..SENDER.end + INDEX_LEN;
        /// The responder's ephemeral public key.
        pub const EPHEMERAL: Range<usize> = RECEIVER.end..RECEIVER.end + KEY_LEN;
        /// The empty payload, sealed: the tag alone.
        pub const EMPTY: Range<usize> = EPHEMERAL.end..EPHEMERAL.end + TAG_LEN;
        /// MAC1, over every byte before it.
        pub const MAC1: Range<usize> = EMPTY.end..EMPTY.end + COOKIE_LEN;
        /// MAC2, over every byte before it.
        pub const MAC2: Range<usize> = MAC1.end..MAC1.end + COOKIE_LEN;
    }

    /// Cookie reply (kernel `struct message_handshake_cookie`).
    pub mod cookie {
        use super::*;
        /// The sender index of the message this answers.
        pub const RECEIVER: Range<usize> = HEADER.end..HEADER.end + INDEX_LEN;
        /// The random XChaCha20-Poly1305 nonce.
        pub const NONCE: Range<usize> = RECEIVER.end..RECEIVER.end + COOKIE_NONCE_LEN;
        /// The cookie, sealed.
        pub const COOKIE: Range<usize> = NONCE.end..NONCE.end + COOKIE_LEN + TAG_LEN;
    }

    /// Transport data (kernel `struct message_data`).
    pub mod data {
        use super::*;
        /// The receiver's session index.
        pub const RECEIVER: Range<usize> = HEADER.end..HEADER.end + INDEX_LEN;
        /// The nonce counter.
        pub const COUNTER: Range<usize> = RECEIVER.end..RECEIVER.end + COUNTER_LEN;
        /// Ciphertext and tag, to the end of the message.
        pub const PAYLOAD: RangeFrom<usize> = COUNTER.end..;
    }
}

// The layouts add up to the sizes messages.rs states.
const _: () = assert!(field::initiation::MAC2.end == INITIATION_LEN);
const _: () = assert!(field::response::MAC2.end == RESPONSE_LEN);
const _: () = assert!(field::cookie::COOKIE.end == COOKIE_REPLY_LEN);
const _: () = assert!(field::data::PAYLOAD.start == crate::messages::DATA_HEADER_LEN);
const _: () = assert!(field::data::PAYLOAD.start + TAG_LEN == DATA_MIN_LEN);

/// The four WireGuard message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Type 1, 148 bytes.
    HandshakeInitiation,
    /// Type 2, 92 bytes.
    HandshakeResponse,
    /// Type 3, 64 bytes.
    CookieReply,
    /// Type 4, at least 32 bytes.
    TransportData,
}

impl MessageType {
    /// The type code (the first byte of the header).
    pub const fn code(self) -> u8 {
        match self {
            MessageType::HandshakeInitiation => MESSAGE_HANDSHAKE_INITIATION,
            MessageType::HandshakeResponse => MESSAGE_HANDSHAKE_RESPONSE,
            MessageType::CookieReply => MESSAGE_HANDSHAKE_COOKIE,
            MessageType::TransportData => MESSAGE_DATA,
        }
    }

    /// The type for a code.
    pub const fn from_code(code: u8) -> Option<MessageType> {
        match code {
            MESSAGE_HANDSHAKE_INITIATION => Some(MessageType::HandshakeInitiation),
            MESSAGE_HANDSHAKE_RESPONSE => Some(MessageType::HandshakeResponse),
            MESSAGE_HANDSHAKE_COOKIE => Some(MessageType::CookieReply),
            MESSAGE_DATA => Some(MessageType::TransportData),
            _ => None,
        }
    }

    /// The exact length of a handshake message, the smallest length of transport data.
    pub const fn min_len(self) -> usize {
        match self {
            MessageType::HandshakeInitiation => INITIATION_LEN,
            MessageType::HandshakeResponse => RESPONSE_LEN,
            MessageType::CookieReply => COOKIE_REPLY_LEN,
            MessageType::TransportData => DATA_MIN_LEN,
        }
    }

    /// Initiation, response or cookie reply: the messages of the handshake queue.
    pub const fn is_handshake(self) -> bool {
        !matches!(self, MessageType::TransportData)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageType::HandshakeInitiation => "handshake initiation",
            MessageType::HandshakeResponse => "handshake response",
            MessageType::CookieReply => "cookie reply",
            MessageType::TransportData => "transport data",
        })
    }
}

/// Type and length of a UDP payload, checked together, reading nothing but the 4-byte header.
///
/// Shorter than the header, or than its type needs: [`Error::Truncated`]. A known type byte
/// with non-zero reserved bytes, or a handshake message longer than its exact size:
/// [`Error::Malformed`]. Any other header: [`Error::Unsupported`].
pub fn classify(payload: &[u8]) -> Result<MessageType> {
    if payload.len() < HEADER_LEN {
        return Err(Error::Truncated);
    }
    let word = bytes::le32(payload, field::HEADER);
    let code = word.to_le_bytes()[0];
    let ty = MessageType::from_code(code).ok_or(Error::Unsupported)?;
    if word != u32::from(code) {
        return Err(Error::Malformed);
    }
    let len = payload.len();
    if len < ty.min_len() {
        return Err(Error::Truncated);
    }
    if ty.is_handshake() && len != ty.min_len() {
        return Err(Error::Malformed);
    }
    Ok(ty)
}

macro_rules! view {
    ($(#[$doc:meta])* $name:ident, $ty:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// The message type this view holds.
            pub const MESSAGE_TYPE: MessageType = $ty;

            /// Wraps `buffer` without checking it.
            pub const fn new_unchecked(buffer: T) -> Self {
                Self { buffer }
            }

            /// Wraps `buffer` after [`check_len`](Self::check_len).
            pub fn new_checked(buffer: T) -> Result<Self> {
                let v = Self::new_unchecked(buffer);
                v.check_len()?;
                Ok(v)
            }

            /// [`classify`] accepts the buffer as this type; a valid message of another type is
            /// [`Error::Unsupported`].
            #[inline]
            pub fn check_len(&self) -> Result<()> {
                // The accepting case first, without classify's dispatch: this type's header word
                // and length (two compares on the data path); then classify says what is wrong.
                let b = self.buffer.as_ref();
                let len = b.len();
                let len_ok = if $ty.is_handshake() { len == $ty.min_len() } else { len >= $ty.min_len() };
                if len_ok && bytes::le32(b, field::HEADER) == u32::from($ty.code()) {
                    return Ok(());
                }
                match classify(b) {
                    Ok(_) => Err(Error::Unsupported),
                    Err(e) => Err(e),
                }
            }

            /// The wrapped buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }

            /// The raw header as a little-endian u32 (the type code when valid).
            #[inline]
            pub fn header(&self) -> u32 {
                bytes::le32(self.buffer.as_ref(), field::HEADER)
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            /// Writes the header: this type's code and three zero bytes. Choosing the type
            /// chooses the length: it invalidates `check_len` until the buffer has it.
            #[inline]
            pub fn init_header(&mut self) {
                bytes::set_le32(self.buffer.as_mut(), field::HEADER, u32::from($ty.code()))
            }
        }

        impl<T: AsRef<[u8]>> AsRef<[u8]> for $name<T> {
            fn as_ref(&self) -> &[u8] {
                self.buffer.as_ref()
            }
        }
    };
}

view!(
    /// A handshake initiation (type 1, 148 bytes).
    HandshakeInitiation,
    MessageType::HandshakeInitiation
);
view!(
    /// A handshake response (type 2, 92 bytes).
    HandshakeResponse,
    MessageType::HandshakeResponse
);
view!(
    /// A cookie reply (type 3, 64 bytes).
    CookieReply,
    MessageType::CookieReply
);
view!(
    /// A transport data message (type 4): header, then ciphertext and tag. 32 bytes at least.
    TransportData,
    MessageType::TransportData
);

/// What the two handshake messages share, initiation and response: a sender index, and
/// `mac1 ‖ mac2` at the end (kernel `struct message_macs`), each MAC covering every byte before
/// it. The cookie module computes and checks the MACs of either through this.
pub trait MacMessage {
    /// The sender's index (a cookie reply to this message is addressed to it).
    fn sender_index(&self) -> u32;
    /// MAC1.
    fn mac1(&self) -> [u8; COOKIE_LEN];
    /// MAC2 (zero without a cookie).
    fn mac2(&self) -> [u8; COOKIE_LEN];
    /// The bytes MAC1 covers: everything before it.
    fn mac1_covered(&self) -> &[u8];
    /// The bytes MAC2 covers: everything before it (MAC1 included).
    fn mac2_covered(&self) -> &[u8];
}

/// [`MacMessage`] on a writable buffer: the MAC setters.
pub trait MacMessageMut: MacMessage {
    /// Sets MAC1.
    fn set_mac1(&mut self, mac: &[u8; COOKIE_LEN]);
    /// Sets MAC2.
    fn set_mac2(&mut self, mac: &[u8; COOKIE_LEN]);
}

/// The sender index and MAC accessors of a handshake view, inherent (so they need no trait in
/// scope) and as [`MacMessage`] / [`MacMessageMut`].
macro_rules! mac_message {
    ($name:ident, $field:ident) => {
        impl<T: AsRef<[u8]>> $name<T> {
            /// The sender's index.
            #[inline]
            pub fn sender_index(&self) -> u32 {
                bytes::le32(self.buffer.as_ref(), field::$field::SENDER)
            }
            /// MAC1.
            #[inline]
            pub fn mac1(&self) -> [u8; COOKIE_LEN] {
                bytes::array(self.buffer.as_ref(), field::$field::MAC1)
            }
            /// MAC2 (zero without a cookie).
            #[inline]
            pub fn mac2(&self) -> [u8; COOKIE_LEN] {
                bytes::array(self.buffer.as_ref(), field::$field::MAC2)
            }
            /// The bytes MAC1 covers: everything before it.
            #[inline]
            pub fn mac1_covered(&self) -> &[u8] {
                bytes::slice(self.buffer.as_ref(), 0..field::$field::MAC1.start)
            }
            /// The bytes MAC2 covers: everything before it (MAC1 included).
            #[inline]
            pub fn mac2_covered(&self) -> &[u8] {
                bytes::slice(self.buffer.as_ref(), 0..field::$field::MAC2.start)
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            /// Sets MAC1.
            #[inline]
            pub fn set_mac1(&mut self, mac: &[u8; COOKIE_LEN]) {
                bytes::set_bytes(self.buffer.as_mut(), field::$field::MAC1, mac)
            }
            /// Sets MAC2.
            #[inline]
            pub fn set_mac2(&mut self, mac: &[u8; COOKIE_LEN]) {
                bytes::set_bytes(self.buffer.as_mut(), field::$field::MAC2, mac)
            }
        }

        // Inherent methods take precedence over trait methods: each line below calls the one
        // above, not itself.
        impl<T: AsRef<[u8]>> MacMessage for $name<T> {
            #[inline]
            fn sender_index(&self) -> u32 {
                $name::sender_index(self)
            }
            #[inline]
            fn mac1(&self) -> [u8; COOKIE_LEN] {
                $name::mac1(self)
            }
            #[inline]
            fn mac2(&self) -> [u8; COOKIE_LEN] {
                $name::mac2(self)
            }
            #[inline]
            fn mac1_covered(&self) -> &[u8] {
                $name::mac1_covered(self)
            }
            #[inline]
            fn mac2_covered(&self) -> &[u8] {
                $name::mac2_covered(self)
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> MacMessageMut for $name<T> {
            #[inline]
            fn set_mac1(&mut self, mac: &[u8; COOKIE_LEN]) {
                $name::set_mac1(self, mac)
            }
            #[inline]
            fn set_mac2(&mut self, mac: &[u8; COOKIE_LEN]) {
                $name::set_mac2(self, mac)
            }
        }
    };
}

mac_message!(HandshakeInitiation, initiation);
mac_message!(HandshakeResponse, response);

impl<T: AsRef<[u8]>> HandshakeInitiation<T> {
    /// The initiator's ephemeral public key.
    #[inline]
    pub fn unencrypted_ephemeral(&self) -> [u8; KEY_LEN] {
        bytes::array(self.buffer.as_ref(), field::initiation::EPHEMERAL)
    }
    /// The initiator's static public key, sealed (32 + 16 bytes).
    #[inline]
    pub fn encrypted_static(&self) -> &[u8] {
        bytes::slice(self.buffer.as_ref(), field::initiation::STATIC)
    }
    /// The TAI64N timestamp, sealed (12 + 16 bytes).
    #[inline]
    pub fn encrypted_timestamp(&self) -> &[u8] {
        bytes::slice(self.buffer.as_ref(), field::initiation::TIMESTAMP)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> HandshakeInitiation<T> {
    /// Sets the sender index.
    #[inline]
    pub fn set_sender_index(&mut self, value: u32) {
        bytes::set_le32(self.buffer.as_mut(), field::initiation::SENDER, value)
    }
    /// Sets the ephemeral public key.
    #[inline]
    pub fn set_unencrypted_ephemeral(&mut self, key: &[u8; KEY_LEN]) {
        bytes::set_bytes(self.buffer.as_mut(), field::initiation::EPHEMERAL, key)
    }
    /// The sealed static key field, to seal or open in place.
    #[inline]
    pub fn encrypted_static_mut(&mut self) -> &mut [u8] {
        bytes::slice_mut(self.buffer.as_mut(), field::initiation::STATIC)
    }
    /// The sealed timestamp field, to seal or open in place.
    #[inline]
    pub fn encrypted_timestamp_mut(&mut self) -> &mut [u8] {
        bytes::slice_mut(self.buffer.as_mut(), field::initiation::TIMESTAMP)
    }
}

impl<T: AsRef<[u8]>> HandshakeResponse<T> {
    /// The initiator's index, echoed.
    #[inline]
    pub fn receiver_index(&self) -> u32 {
        bytes::le32(self.buffer.as_ref(), field::response::RECEIVER)
    }
    /// The responder's ephemeral public key.
    #[inline]
    pub fn unencrypted_ephemeral(&self) -> [u8; KEY_LEN] {
        bytes::array(self.buffer.as_ref(), field::response::EPHEMERAL)
    }
    /// The sealed empty payload (16 bytes: the tag only).
    #[inline]
    pub fn encrypted_nothing(&self) -> &[u8] {
        bytes::slice(self.buffer.as_ref(), field::response::EMPTY)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> HandshakeResponse<T> {
    /// Sets the sender index.
    #[inline]
    pub fn set_sender_index(&mut self, value: u32) {
        bytes::set_le32(self.buffer.as_mut(), field::response::SENDER, value)
    }
    /// Sets the receiver index.
    #[inline]
    pub fn set_receiver_index(&mut self, value: u32) {
        bytes::set_le32(self.buffer.as_mut(), field::response::RECEIVER, value)
    }
    /// Sets the ephemeral public key.
    #[inline]
    pub fn set_unencrypted_ephemeral(&mut self, key: &[u8; KEY_LEN]) {
        bytes::set_bytes(self.buffer.as_mut(), field::response::EPHEMERAL, key)
    }
    /// The sealed empty payload, to seal or open in place.
    #[inline]
    pub fn encrypted_nothing_mut(&mut self) -> &mut [u8] {
        bytes::slice_mut(self.buffer.as_mut(), field::response::EMPTY)
    }
}

impl<T: AsRef<[u8]>> CookieReply<T> {
    /// The index of the handshake message this answers.
    #[inline]
    pub fn receiver_index(&self) -> u32 {
        bytes::le32(self.buffer.as_ref(), field::cookie::RECEIVER)
    }
    /// The random XChaCha20-Poly1305 nonce.
    #[inline]
    pub fn nonce(&self) -> [u8; COOKIE_NONCE_LEN] {
        bytes::array(self.buffer.as_ref(), field::cookie::NONCE)
    }
    /// The sealed cookie (16 + 16 bytes).
    #[inline]
    pub fn encrypted_cookie(&self) -> &[u8] {
        bytes::slice(self.buffer.as_ref(), field::cookie::COOKIE)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> CookieReply<T> {
    /// Sets the receiver index.
    #[inline]
    pub fn set_receiver_index(&mut self, value: u32) {
        bytes::set_le32(self.buffer.as_mut(), field::cookie::RECEIVER, value)
    }
    /// Sets the nonce.
    #[inline]
    pub fn set_nonce(&mut self, nonce: &[u8; COOKIE_NONCE_LEN]) {
        bytes::set_bytes(self.buffer.as_mut(), field::cookie::NONCE, nonce)
    }
    /// The sealed cookie field, to seal or open in place.
    #[inline]
    pub fn encrypted_cookie_mut(&mut self) -> &mut [u8] {
        bytes::slice_mut(self.buffer.as_mut(), field::cookie::COOKIE)
    }
}

impl<T: AsRef<[u8]>> TransportData<T> {
    /// The receiver's session index.
    #[inline]
    pub fn receiver_index(&self) -> u32 {
        bytes::le32(self.buffer.as_ref(), field::data::RECEIVER)
    }
    /// The nonce counter.
    #[inline]
    pub fn counter(&self) -> u64 {
        bytes::le64(self.buffer.as_ref(), field::data::COUNTER)
    }
    /// Ciphertext and tag (16 bytes at least; exactly 16 for a keepalive).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        bytes::rest(self.buffer.as_ref(), field::data::PAYLOAD)
    }
    /// Whether this is a keepalive: no ciphertext, only the tag.
    #[inline]
    pub fn is_keepalive(&self) -> bool {
        self.payload().len() == TAG_LEN
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TransportData<T> {
    /// Sets the receiver index.
    #[inline]
    pub fn set_receiver_index(&mut self, value: u32) {
        bytes::set_le32(self.buffer.as_mut(), field::data::RECEIVER, value)
    }
    /// Sets the counter.
    #[inline]
    pub fn set_counter(&mut self, value: u64) {
        bytes::set_le64(self.buffer.as_mut(), field::data::COUNTER, value)
    }
    /// Ciphertext and tag, to seal or open in place.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        bytes::rest_mut(self.buffer.as_mut(), field::data::PAYLOAD)
    }
}

/// A classified WireGuard message: one of the four views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<T: AsRef<[u8]>> {
    /// Type 1.
    HandshakeInitiation(HandshakeInitiation<T>),
    /// Type 2.
    HandshakeResponse(HandshakeResponse<T>),
    /// Type 3.
    CookieReply(CookieReply<T>),
    /// Type 4.
    TransportData(TransportData<T>),
}

impl<T: AsRef<[u8]>> Message<T> {
    /// [`classify`]s `buffer` and wraps it in the matching view.
    pub fn new_checked(buffer: T) -> Result<Message<T>> {
        Ok(match classify(buffer.as_ref())? {
            MessageType::HandshakeInitiation => {
                Message::HandshakeInitiation(HandshakeInitiation::new_unchecked(buffer))
            }
            MessageType::HandshakeResponse => Message::HandshakeResponse(HandshakeResponse::new_unchecked(buffer)),
            MessageType::CookieReply => Message::CookieReply(CookieReply::new_unchecked(buffer)),
            MessageType::TransportData => Message::TransportData(TransportData::new_unchecked(buffer)),
        })
    }

    /// Which of the four it is.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::HandshakeInitiation(_) => MessageType::HandshakeInitiation,
            Message::HandshakeResponse(_) => MessageType::HandshakeResponse,
            Message::CookieReply(_) => MessageType::CookieReply,
            Message::TransportData(_) => MessageType::TransportData,
        }
    }
}

#[cfg(test)]
mod tests;
