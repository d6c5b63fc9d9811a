//! The WireGuard views on captured and hand-built messages.

use super::*;

// UDP payloads of the first four messages captured between two wireguard-go peers: initiation,
// response, keepalive, data.
const INITIATION: &str = concat!(
    "01000000744ec3433014f5efe575332f4b60707ff3c4e76c033135ab00ac68294c4bc7314dab2c61a2606fbcb23abb4c",
    "28175ab4b3bb4936310b9f89352ed6cb091acd44469302799cbb142c2f4a88343412660cb2f7a9230df47cb8e7875c94",
    "decae0fc1f663941a6ee50a2000277611df9840b15e293d1461a4a2633c443b925cb8596000000000000000000000000",
    "00000000",
);
const RESPONSE: &str = concat!(
    "02000000277ef96e744ec3433a631ab07c23a88fc7d57541ee5ae907f5969bcb5a3558ace7b3afbecbd51455803ad93b",
    "d8edc7a857bb7f201a817d41539f10318a7d5f47415131d97bca949100000000000000000000000000000000",
);
const KEEPALIVE: &str = "04000000277ef96e00000000000000007000a88283300576edc3cdefe19bf3e8";
const DATA: &str = concat!(
    "04000000277ef96e01000000000000005c6c9f353014ed8dfc0be2fd7350559dd09783c6a647a0495bc3024d656669d1",
    "83ded46b70a1e141b9f2f46ae6ca281e188fc75dd1888d59427cd200cc2b3c3a09c28022c0ee6ba215a730c6c8701969",
    "ce823f839f300f2588ae0a2bd0027c9907a2724b0b7bbcb54b1435df4b622781",
);
// A cookie reply laid out by hand: receiver 0x43c34e74, nonce 0x00..0x17, cookie 0x80..0x9f.
const COOKIE: &str = concat!(
    "03000000744ec343",
    "000102030405060708090a0b0c0d0e0f1011121314151617",
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
);

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn classify_captured_messages() {
    assert_eq!(classify(&h(INITIATION)), Ok(MessageType::HandshakeInitiation));
    assert_eq!(classify(&h(RESPONSE)), Ok(MessageType::HandshakeResponse));
    assert_eq!(classify(&h(COOKIE)), Ok(MessageType::CookieReply));
    assert_eq!(classify(&h(KEEPALIVE)), Ok(MessageType::TransportData));
    assert_eq!(classify(&h(DATA)), Ok(MessageType::TransportData));
}

#[test]
fn classify_rejects_like_the_kernel() {
    assert_eq!(classify(&[]), Err(Error::Truncated));
    assert_eq!(classify(&[1, 0, 0]), Err(Error::Truncated));
    // Unknown types.
    for t in [0u8, 5, 0xff] {
        let mut m = h(INITIATION);
        m[0] = t;
        assert_eq!(classify(&m), Err(Error::Unsupported), "type {t}");
    }
    // Non-zero reserved bytes: the kernel's LE u32 comparison fails.
    for i in 1..4 {
        for msg in [INITIATION, RESPONSE, COOKIE, KEEPALIVE] {
            let mut m = h(msg);
            m[i] = 1;
            assert_eq!(classify(&m), Err(Error::Malformed), "byte {i}");
        }
    }
    // Handshake messages have one exact length.
    for msg in [INITIATION, RESPONSE, COOKIE] {
        let b = h(msg);
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(classify(&longer), Err(Error::Malformed));
        for n in HEADER_LEN..b.len() {
            assert_eq!(classify(&b[..n]), Err(Error::Truncated), "length {n}");
        }
    }
    // Transport data: at least 32, any length above.
    let b = h(DATA);
    for n in 0..b.len() {
        assert_eq!(classify(&b[..n]).is_ok(), n >= DATA_MIN_LEN, "length {n}");
    }
    assert_eq!(classify(&b[..31]), Err(Error::Truncated));
    // Right length, wrong type: a 92-byte "initiation".
    let mut m = h(RESPONSE);
    m[0] = 1;
    assert_eq!(classify(&m), Err(Error::Truncated));
}

#[test]
fn initiation_fields() {
    let b = h(INITIATION);
    let v = HandshakeInitiation::new_checked(&b[..]).unwrap();
    assert_eq!(v.header(), 1);
    assert_eq!(v.sender_index(), 0x43c3_4e74);
    assert_eq!(&v.unencrypted_ephemeral()[..4], &[0x30, 0x14, 0xf5, 0xef]);
    assert_eq!(v.encrypted_static().len(), 48);
    assert_eq!(v.encrypted_static(), &b[40..88]);
    assert_eq!(v.encrypted_timestamp(), &b[88..116]);
    assert_eq!(v.mac1(), <[u8; 16]>::try_from(&b[116..132]).unwrap());
    assert_eq!(v.mac2(), [0; 16], "no cookie: zero mac2");
    assert_eq!(v.mac1_covered(), &b[..116]);
    assert_eq!(v.mac2_covered(), &b[..132]);
    // Other views refuse it.
    assert_eq!(HandshakeResponse::new_checked(&b[..]).err(), Some(Error::Unsupported));
    assert_eq!(TransportData::new_checked(&b[..]).err(), Some(Error::Unsupported));
}

#[test]
fn response_matches_the_initiation() {
    let r = h(RESPONSE);
    let v = HandshakeResponse::new_checked(&r[..]).unwrap();
    assert_eq!(v.sender_index(), 0x6ef9_7e27);
    assert_eq!(v.receiver_index(), 0x43c3_4e74, "echoes the initiator's sender index");
    assert_eq!(&v.unencrypted_ephemeral()[..], &r[12..44]);
    assert_eq!(v.encrypted_nothing(), &r[44..60]);
    assert_eq!(&v.mac1()[..], &r[60..76]);
    assert_eq!(v.mac2(), [0; 16]);
    assert_eq!(v.mac1_covered().len(), 60);
    assert_eq!(v.mac2_covered().len(), 76);
}

#[test]
fn transport_data_fields() {
    let k = h(KEEPALIVE);
    let v = TransportData::new_checked(&k[..]).unwrap();
    assert_eq!((v.receiver_index(), v.counter()), (0x6ef9_7e27, 0));
    assert!(v.is_keepalive());
    assert_eq!(v.payload(), &k[16..]);
    let d = h(DATA);
    let v = TransportData::new_checked(&d[..]).unwrap();
    assert_eq!((v.receiver_index(), v.counter()), (0x6ef9_7e27, 1));
    assert!(!v.is_keepalive());
    assert_eq!(v.payload().len(), 112, "84-byte ping padded to 96, plus the tag");
    let mut big = d.clone();
    big[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(TransportData::new_checked(&big[..]).unwrap().counter(), 0x0102_0304_0506_0708);
}

#[test]
fn cookie_fields() {
    let c = h(COOKIE);
    let v = CookieReply::new_checked(&c[..]).unwrap();
    assert_eq!(v.receiver_index(), 0x43c3_4e74);
    assert_eq!(v.nonce(), core::array::from_fn(|i| i as u8));
    assert_eq!(v.encrypted_cookie(), &(0x80..0xa0).collect::<Vec<u8>>()[..]);
}

#[test]
fn build_every_message_in_place_over_a5() {
    let want = h(INITIATION);
    let mut buf = vec![0xa5u8; INITIATION_LEN];
    let mut v = HandshakeInitiation::new_unchecked(&mut buf[..]);
    v.init_header();
    v.set_sender_index(0x43c3_4e74);
    v.set_unencrypted_ephemeral(want[8..40].try_into().unwrap());
    v.encrypted_static_mut().copy_from_slice(&want[40..88]);
    v.encrypted_timestamp_mut().copy_from_slice(&want[88..116]);
    v.set_mac1(want[116..132].try_into().unwrap());
    v.set_mac2(&[0; 16]);
    assert_eq!(buf, want);

    let want = h(RESPONSE);
    let mut buf = vec![0xa5u8; RESPONSE_LEN];
    let mut v = HandshakeResponse::new_unchecked(&mut buf[..]);
    v.init_header();
    v.set_sender_index(0x6ef9_7e27);
    v.set_receiver_index(0x43c3_4e74);
    v.set_unencrypted_ephemeral(want[12..44].try_into().unwrap());
    v.encrypted_nothing_mut().copy_from_slice(&want[44..60]);
    v.set_mac1(want[60..76].try_into().unwrap());
    v.set_mac2(&[0; 16]);
    assert_eq!(buf, want);

    let want = h(COOKIE);
    let mut buf = vec![0xa5u8; COOKIE_REPLY_LEN];
    let mut v = CookieReply::new_unchecked(&mut buf[..]);
    v.init_header();
    v.set_receiver_index(0x43c3_4e74);
    v.set_nonce(&core::array::from_fn(|i| i as u8));
    v.encrypted_cookie_mut().copy_from_slice(&want[32..]);
    assert_eq!(buf, want);

    let want = h(DATA);
    let mut buf = vec![0xa5u8; want.len()];
    let mut v = TransportData::new_unchecked(&mut buf[..]);
    v.init_header();
    v.set_receiver_index(0x6ef9_7e27);
    v.set_counter(1);
    v.payload_mut().copy_from_slice(&want[16..]);
    assert_eq!(buf, want);
}

#[test]
fn message_dispatch() {
    for (msg, ty) in [
        (INITIATION, MessageType::HandshakeInitiation),
        (RESPONSE, MessageType::HandshakeResponse),
        (COOKIE, MessageType::CookieReply),
        (DATA, MessageType::TransportData),
    ] {
        let b = h(msg);
        let m = Message::new_checked(&b[..]).unwrap();
        assert_eq!(m.message_type(), ty);
        assert_eq!(MessageType::from_code(ty.code()), Some(ty));
        assert_eq!(ty.is_handshake(), ty != MessageType::TransportData);
    }
    assert_eq!(Message::new_checked(&[9u8; 40][..]).err(), Some(Error::Unsupported));
    assert_eq!(MessageType::CookieReply.to_string(), "cookie reply");
}

#[test]
fn unchecked_views_on_short_buffers_do_not_panic() {
    let b = h(INITIATION);
    for n in 0..b.len() {
        let s = &b[..n];
        let i = HandshakeInitiation::new_unchecked(s);
        let _ = (i.sender_index(), i.unencrypted_ephemeral(), i.encrypted_static(), i.mac1(), i.mac2_covered());
        let r = HandshakeResponse::new_unchecked(s);
        let _ = (r.receiver_index(), r.encrypted_nothing(), r.mac2(), r.mac1_covered());
        let c = CookieReply::new_unchecked(s);
        let _ = (c.nonce(), c.encrypted_cookie());
        let d = TransportData::new_unchecked(s);
        let _ = (d.counter(), d.payload(), d.is_keepalive());
        let mut m = s.to_vec();
        let mut w = HandshakeInitiation::new_unchecked(&mut m[..]);
        w.set_mac2(&[1; 16]);
        w.encrypted_static_mut().fill(0);
        let mut w = TransportData::new_unchecked(&mut m[..]);
        w.set_counter(u64::MAX);
        w.payload_mut().fill(0);
    }
}
