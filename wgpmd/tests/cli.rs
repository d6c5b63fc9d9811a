//! The command line's habits, without root: `--version` names the backends, the interface is
//! named the same way in every subcommand (old spellings still accepted, hidden), `-a` is
//! deprecated with a warning, `--lcores` is now `--cores`, and `wgpmd assets` writes the man
//! pages and completions the package ships.
#![forbid(unsafe_code)]

use std::process::{Command, Output};

fn wgpmd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgpmd")).args(args).env("NO_COLOR", "1").output().expect("run wgpmd")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn version_lists_the_compiled_in_backends() {
    let o = wgpmd(&["--version"]);
    assert!(o.status.success());
    let t = text(&o);
    assert!(t.starts_with(&format!("wgpmd {}\n", env!("CARGO_PKG_VERSION"))), "{t}");
    let backends = t.lines().find(|l| l.starts_with("backends: ")).expect("a backends line");
    for b in ["af_packet", "tun", "mem", "vfio"] {
        assert!(backends.contains(b), "{backends}");
    }
    assert_eq!(backends.contains("dpdk"), cfg!(feature = "dpdk"), "{backends}");
    assert!(t.lines().any(|l| l.starts_with("features: ")), "{t}");
}

/// `--check` never opens a port, so these run unprivileged; core 0 always exists.
const CHECK: &[&str] = &["--check", "--port", "af_packet:eth9", "--address", "192.0.2.1/24"];

#[test]
fn the_interface_is_the_first_argument_and_old_spellings_still_work() {
    let run = |pre: &[&str], post: &[&str]| {
        let mut a = vec!["run"];
        a.extend(pre);
        a.extend(CHECK);
        a.extend(post);
        let o = wgpmd(&a);
        (o.status.code(), text(&o))
    };
    let (code, t) = run(&["wgx1"], &["-l", "0"]);
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("interface wgx1") && t.contains("inner tun:wgx1") && t.contains("cores [0]"), "{t}");
    // Old spellings, hidden: --name, --lcores.
    let (code, t) = run(&["--name", "wgx2"], &["--lcores", "0"]);
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("interface wgx2") && t.contains("cores [0]"), "{t}");
    let (code, t) = run(&["wgx3", "--name", "wgx4"], &[]);
    assert_eq!(code, Some(2), "both spellings at once is a usage error: {t}");
    // `stats` takes the same positional name (and fails here: nothing runs under that name).
    let o = wgpmd(&["stats", "wgx-none"]);
    assert!(!o.status.success() && text(&o).contains("wgx-none"), "{}", text(&o));
    // None of the old spellings is offered in --help.
    let help = text(&wgpmd(&["run", "--help"]));
    assert!(help.contains("[INTERFACE]") && help.contains("--cores <LIST>"), "{help}");
    for old in ["--name <", "--lcores <", "-a,", "-a <"] {
        assert!(!help.contains(old), "--help shows {old}: {help}");
    }
}

#[test]
fn dash_a_is_deprecated_with_a_warning() {
    let o = wgpmd(&["run", "wgx5", "--check", "-a", "af_packet:eth9", "--address", "192.0.2.1/24"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("`-a af_packet:eth9` is deprecated") && t.contains("use --port af_packet:eth9"), "{t}");
    let o = wgpmd(&["run", "--check", "-a", "af_packet:eth9", "--port", "af_packet:eth8", "--address", "192.0.2.1/24"]);
    assert_eq!(o.status.code(), Some(2), "-a with --port is a usage error: {}", text(&o));
    let o = wgpmd(&["run", "--check", "--address", "192.0.2.1/24"]);
    assert!(o.status.code() == Some(2) && text(&o).contains("--port"), "no port: {}", text(&o));
}

#[test]
fn check_failures_exit_1_with_the_reason() {
    let o = wgpmd(&["run", "wgx6", "--check", "--port", "af_packet:eth9", "--address", "192.0.2.1/33"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("check failed: --address `192.0.2.1/33`"), "{t}");
}

#[test]
fn assets_writes_man_pages_and_completions() {
    let dir = std::env::temp_dir().join(format!("wgpmd-assets-{}", std::process::id()));
    let o = wgpmd(&["assets", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let man = std::fs::read_to_string(dir.join("wgpmd.1")).unwrap();
    assert!(man.contains(".TH wgpmd 1") && man.contains("run"), "{man}");
    let run = std::fs::read_to_string(dir.join("wgpmd-run.1")).unwrap();
    assert!(run.contains("\\-\\-port") && run.contains("\\-\\-check") && !run.contains("\\-\\-lcores\\fR"), "{run}");
    assert!(!dir.join("wgpmd-assets.1").exists(), "the hidden subcommand has no page");
    let bash = std::fs::read_to_string(dir.join("wgpmd.bash")).unwrap();
    assert!(bash.contains("complete -F") && bash.contains("--port"), "bash completion");
    let zsh = std::fs::read_to_string(dir.join("_wgpmd")).unwrap();
    assert!(zsh.starts_with("#compdef wgpmd"), "zsh completion");
    let _ = std::fs::remove_dir_all(&dir);
}
