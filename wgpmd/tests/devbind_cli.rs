//! `wgpmd status/bind/unbind` and `run --port vfio:...` from the command line, against a fake
//! sysfs tree (the hidden `--sysfs-root`): what an operator sees, exit codes included. The real
//! sysfs writes are exercised in the QEMU guest (docs/TESTING.md).
#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Fake(PathBuf);

impl Fake {
    fn new(tag: &str) -> Fake {
        let p = std::env::temp_dir().join(format!("wgpmd-devbind-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        for d in
            ["sys/bus/pci/devices", "sys/bus/pci/drivers/virtio-pci", "sys/kernel/iommu_groups/2/devices", "proc/net"]
        {
            fs::create_dir_all(p.join(d)).unwrap();
        }
        let dev = p.join("sys/bus/pci/devices/0000:00:02.0");
        fs::create_dir_all(dev.join("virtio0/net/ens2")).unwrap();
        fs::write(dev.join("vendor"), "0x1af4\n").unwrap();
        fs::write(dev.join("device"), "0x1041\n").unwrap();
        fs::write(dev.join("class"), "0x020000\n").unwrap();
        fs::write(dev.join("driver_override"), "(null)\n").unwrap();
        symlink(p.join("sys/bus/pci/drivers/virtio-pci"), dev.join("driver")).unwrap();
        symlink(p.join("sys/kernel/iommu_groups/2"), dev.join("iommu_group")).unwrap();
        symlink(&dev, p.join("sys/kernel/iommu_groups/2/devices/0000:00:02.0")).unwrap();
        fs::write(p.join("proc/net/route"), "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n").unwrap();
        Fake(p)
    }
    fn wgpmd(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_wgpmd"))
            .args(args)
            .arg("--sysfs-root")
            .arg(&self.0)
            .output()
            .expect("run wgpmd")
    }
    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.0.join(rel)).unwrap_or_default()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn status_shows_the_nic_and_bind_refuses_the_default_route() {
    let f = Fake::new("route");
    let o = f.wgpmd(&["status"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("0000:00:02.0  1af4:1041  virtio-pci     2      ens2"), "{t}");
    fs::write(
        f.0.join("proc/net/route"),
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\nens2\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\n",
    )
    .unwrap();
    assert!(text(&f.wgpmd(&["status"])).contains("default route"));
    fs::create_dir_all(f.0.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
    let o = f.wgpmd(&["bind", "00:02.0"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("carries the host's default route (interface ens2)"), "{}", text(&o));
    assert_eq!(f.read("sys/bus/pci/devices/0000:00:02.0/driver_override"), "(null)\n", "nothing changed");
}

#[test]
fn bind_and_unbind_write_sysfs_and_fail_loudly_when_the_kernel_does_not_follow() {
    let f = Fake::new("bind");
    let o = f.wgpmd(&["bind", "0000:00:02.0"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("modprobe vfio-pci"), "no vfio-pci driver in the fake tree: {}", text(&o));
    fs::create_dir_all(f.0.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
    let o = f.wgpmd(&["bind", "0000:00:02.0"]);
    assert!(!o.status.success(), "the fake kernel does not rebind: {}", text(&o));
    assert!(text(&o).contains("still bound to virtio-pci"), "{}", text(&o));
    assert_eq!(f.read("sys/bus/pci/devices/0000:00:02.0/driver_override"), "vfio-pci");
    assert_eq!(f.read("run/wgpmd/bind/0000:00:02.0"), "virtio-pci\n");
    let o = f.wgpmd(&["bind", "nonsense"]);
    assert!(text(&o).contains("not a PCI address"), "{}", text(&o));
    let o = f.wgpmd(&["unbind", "0000:00:07.0"]);
    assert!(!o.status.success() && text(&o).contains("no PCI device 0000:00:07.0"), "{}", text(&o));
}

#[test]
fn run_on_a_missing_vfio_device_exits_with_the_reason() {
    // The real sysfs: no such device on any machine (bus 0x7e, device 0x1f).
    let o = Command::new(env!("CARGO_BIN_EXE_wgpmd"))
        .args(["run", "wgvfiotest0", "--port", "vfio:0000:7e:1f.7", "--address", "192.0.2.1/24"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("vfio:0000:7e:1f.7: no PCI device 0000:7e:1f.7"), "{t}");
    assert!(!Path::new("/sys/class/net/wgvfiotest0").exists(), "no TUN left behind");
}
