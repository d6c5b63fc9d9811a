//! The `wan_frame` fuzz target's committed corpus (`fuzz/corpus/wan_frame/`) replayed through
//! its body (`wgpmd::wan::fuzzing::wan_frame_both`: as it is and with checksums repaired) on
//! stable. The corpus must be there and reach the replies.
#![forbid(unsafe_code)]

use std::path::Path;

use wgpmd::wan::fuzzing::wan_frame_both;

#[test]
fn corpus_wan_frame_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/wan_frame");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 32, "{}: {} inputs", dir.display(), files.len());
    let (mut replies, mut outer) = (0, 0);
    for f in &files {
        for r in wan_frame_both(&std::fs::read(f).unwrap()) {
            replies += usize::from(r.arp_reply || r.echo_reply_v4 || r.echo_reply_v6 || r.neighbor_advert);
            outer += usize::from(r.outer_v4 || r.outer_v6);
        }
    }
    assert!(replies >= 8 && outer >= 8, "replies {replies}, outer headers {outer}");
}
