//! sysfs: PCI devices, their drivers and IOMMU groups, and the devbind workflow behind
//! `wgpmd status`, `wgpmd bind` and `wgpmd unbind`. Everything is relative to a root directory
//! (`/` in production; a fake tree in tests), so all of it is unit-tested on any host.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::VfioError;

/// The driver `wgpmd bind` binds to.
pub const VFIO_DRIVER: &str = "vfio-pci";

/// A filesystem root holding `sys/` and `proc/` (and `run/` for the remembered drivers).
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs { root: PathBuf::from("/") }
    }
}

/// Normalise a PCI address: `00:02.0` gets the domain `0000:`; anything not of the form
/// `DDDD:BB:DD.F` (hex) is an error that shows the expected form.
pub fn parse_bdf(s: &str) -> Result<String, VfioError> {
    let full = if s.matches(':').count() == 1 { format!("0000:{s}") } else { s.to_string() };
    let ok = {
        let b = full.as_bytes();
        b.len() == 12
            && b[4] == b':'
            && b[7] == b':'
            && b[10] == b'.'
            && full.char_indices().all(|(i, c)| [4, 7, 10].contains(&i) || c.is_ascii_hexdigit())
            && (b'0'..=b'7').contains(&b[11])
    };
    if !ok {
        return Err(VfioError::BadBdf { bdf: s.to_string() });
    }
    Ok(full.to_ascii_lowercase())
}

/// One network device as `wgpmd status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// PCI address.
    pub bdf: String,
    /// `vendor:device`, hex without 0x.
    pub id: String,
    /// Class code (0x02xxxx for network controllers).
    pub class: u32,
    /// Bound driver, if any.
    pub driver: Option<String>,
    /// IOMMU group, if the device has one.
    pub iommu_group: Option<String>,
    /// Kernel interface names (when a kernel driver holds it).
    pub interfaces: Vec<String>,
    /// One of its interfaces carries a default route.
    pub active_route: bool,
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn link_name(p: &Path) -> Option<String> {
    fs::read_link(p).ok()?.file_name().map(|n| n.to_string_lossy().into_owned())
}

fn parse_hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// Interfaces with a default route, from `/proc/net/route` (IPv4: destination and mask 0) and
/// `/proc/net/ipv6_route` (destination ::/0).
pub fn default_route_interfaces(route: &str, ipv6_route: &str) -> Vec<String> {
    let mut out = Vec::new();
    for l in route.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000" && !out.iter().any(|x| x == f[0]) {
            out.push(f[0].to_string());
        }
    }
    for l in ipv6_route.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 10 && f[0] == "00000000000000000000000000000000" && f[1] == "00" && f[9] != "lo" {
            // Unreachable defaults of the kernel (flags 0x00200200) go through `lo`; skip those.
            if !out.iter().any(|x| x == f[9]) {
                out.push(f[9].to_string());
            }
        }
    }
    out
}

impl Sysfs {
    /// sysfs/procfs under `root` (`/` for the real ones).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// `sys/bus/pci/devices/BDF`.
    pub fn device_dir(&self, bdf: &str) -> PathBuf {
        self.path(&format!("sys/bus/pci/devices/{bdf}"))
    }

    /// The device exists (else [`VfioError::NoSuchDevice`]).
    pub fn check_exists(&self, bdf: &str) -> Result<(), VfioError> {
        if self.device_dir(bdf).exists() {
            Ok(())
        } else {
            Err(VfioError::NoSuchDevice { bdf: bdf.to_string() })
        }
    }

    /// The driver bound to the device.
    pub fn driver(&self, bdf: &str) -> Option<String> {
        link_name(&self.device_dir(bdf).join("driver"))
    }

    /// The device's IOMMU group number.
    pub fn iommu_group(&self, bdf: &str) -> Option<String> {
        link_name(&self.device_dir(bdf).join("iommu_group"))
    }

    /// The devices of IOMMU group `group`, with their drivers.
    pub fn group_devices(&self, group: &str) -> Vec<(String, Option<String>)> {
        let dir = self.path(&format!("sys/kernel/iommu_groups/{group}/devices"));
        let mut v: Vec<(String, Option<String>)> = fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .map(|b| {
                        let d = self.driver(&b);
                        (b, d)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Whether the kernel offers no-IOMMU VFIO (`enable_unsafe_noiommu_mode` is a parameter of
    /// the vfio module only when it was built with CONFIG_VFIO_NOIOMMU).
    pub fn noiommu_enabled(&self) -> bool {
        read_trim(&self.path("sys/module/vfio/parameters/enable_unsafe_noiommu_mode"))
            .is_some_and(|v| v == "Y" || v == "1")
    }

    fn default_routes(&self) -> Vec<String> {
        default_route_interfaces(
            &fs::read_to_string(self.path("proc/net/route")).unwrap_or_default(),
            &fs::read_to_string(self.path("proc/net/ipv6_route")).unwrap_or_default(),
        )
    }

    /// What `wgpmd status` shows about one device.
    pub fn describe(&self, bdf: &str) -> Result<NetDevice, VfioError> {
        self.check_exists(bdf)?;
        let d = self.device_dir(bdf);
        let vendor = read_trim(&d.join("vendor")).and_then(|s| parse_hex(&s)).unwrap_or(0);
        let device = read_trim(&d.join("device")).and_then(|s| parse_hex(&s)).unwrap_or(0);
        let class = read_trim(&d.join("class")).and_then(|s| parse_hex(&s)).unwrap_or(0);
        let mut interfaces: Vec<String> = fs::read_dir(d.join("net"))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        interfaces.sort();
        // virtio devices put their interface under the virtioN child device.
        if interfaces.is_empty() {
            if let Ok(rd) = fs::read_dir(&d) {
                for e in rd.filter_map(|e| e.ok()) {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.starts_with("virtio") {
                        if let Ok(rd) = fs::read_dir(e.path().join("net")) {
                            interfaces.extend(
                                rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()),
                            );
                        }
                    }
                }
            }
        }
        let routes = self.default_routes();
        let active_route = interfaces.iter().any(|i| routes.contains(i));
        Ok(NetDevice {
            bdf: bdf.to_string(),
            id: format!("{vendor:04x}:{device:04x}"),
            class,
            driver: self.driver(bdf),
            iommu_group: self.iommu_group(bdf),
            interfaces,
            active_route,
        })
    }

    /// Every network controller (PCI class 0x02xxxx), sorted by address.
    pub fn net_devices(&self) -> Vec<NetDevice> {
        let mut bdfs: Vec<String> = fs::read_dir(self.path("sys/bus/pci/devices"))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        bdfs.sort();
        bdfs.iter().filter_map(|b| self.describe(b).ok()).filter(|d| d.class >> 16 == 0x02).collect()
    }

    /// `wgpmd status` as text: one line per network device.
    pub fn status_text(&self) -> String {
        let devs = self.net_devices();
        let mut s = String::new();
        if devs.is_empty() {
            s.push_str("no network PCI devices (class 0x02) found\n");
            return s;
        }
        let _ = writeln!(s, "{:<13} {:<10} {:<14} {:<6} {:<16} ROUTE", "BDF", "ID", "DRIVER", "GROUP", "INTERFACE");
        for d in devs {
            let _ = writeln!(
                s,
                "{:<13} {:<10} {:<14} {:<6} {:<16} {}",
                d.bdf,
                d.id,
                d.driver.as_deref().unwrap_or("-"),
                d.iommu_group.as_deref().unwrap_or("-"),
                if d.interfaces.is_empty() { "-".to_string() } else { d.interfaces.join(",") },
                if d.active_route { "default route (in use by the host)" } else { "-" }
            );
        }
        s
    }

    fn write(&self, p: &Path, v: &str) -> Result<(), VfioError> {
        fs::write(p, v).map_err(|source| VfioError::Sysfs { path: p.display().to_string(), source })
    }

    fn state_file(&self, bdf: &str) -> PathBuf {
        self.path(&format!("run/wgpmd/bind/{bdf}"))
    }

    /// The driver the device had before `bind`, if remembered.
    pub fn remembered_driver(&self, bdf: &str) -> Option<String> {
        read_trim(&self.state_file(bdf)).filter(|s| !s.is_empty())
    }

    fn ensure_driver_loaded(&self, driver: &str, module: &str) -> Result<(), VfioError> {
        let dir = self.path(&format!("sys/bus/pci/drivers/{driver}"));
        if dir.exists() {
            return Ok(());
        }
        if self.root == Path::new("/") {
            let out = std::process::Command::new("modprobe").arg(module).output();
            if dir.exists() {
                return Ok(());
            }
            let why = match out {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => format!("could not run modprobe: {e}"),
            };
            return Err(VfioError::NoDriver { driver: driver.to_string(), module: module.to_string(), why });
        }
        Err(VfioError::NoDriver { driver: driver.to_string(), module: module.to_string(), why: "not loaded".into() })
    }

    /// `wgpmd bind BDF`: take the device from its kernel driver and give it to vfio-pci
    /// (driver_override), remembering the old driver for `unbind`. Refuses a device whose
    /// interface carries a default route. Returns what was done, for the operator.
    pub fn bind(&self, bdf: &str) -> Result<String, VfioError> {
        let bdf = parse_bdf(bdf)?;
        let dev = self.describe(&bdf)?;
        if dev.driver.as_deref() == Some(VFIO_DRIVER) {
            return Ok(format!("{bdf}: already bound to {VFIO_DRIVER}"));
        }
        if dev.active_route {
            return Err(VfioError::ActiveRoute { bdf, interfaces: dev.interfaces.join(",") });
        }
        self.ensure_driver_loaded(VFIO_DRIVER, "vfio-pci")?;
        let dir = self.device_dir(&bdf);
        if let Some(old) = &dev.driver {
            let state = self.state_file(&bdf);
            if let Some(parent) = state.parent() {
                fs::create_dir_all(parent)
                    .map_err(|source| VfioError::Sysfs { path: parent.display().to_string(), source })?;
            }
            self.write(&state, &format!("{old}\n"))?;
            self.write(&dir.join("driver").join("unbind"), &bdf)?;
        }
        self.write(&dir.join("driver_override"), VFIO_DRIVER)?;
        self.write(&self.path("sys/bus/pci/drivers_probe"), &bdf)?;
        match self.driver(&bdf) {
            Some(d) if d == VFIO_DRIVER => Ok(format!(
                "{bdf}: bound to {VFIO_DRIVER} (was {}; `wgpmd unbind {bdf}` gives it back), IOMMU group {}",
                dev.driver.as_deref().unwrap_or("unbound"),
                dev.iommu_group.as_deref().unwrap_or("none")
            )),
            other => Err(VfioError::BindFailed {
                bdf,
                driver: VFIO_DRIVER.into(),
                now: other.unwrap_or_else(|| "no driver".into()),
                hint: if dev.iommu_group.is_none() {
                    "the device has no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on) or load vfio with enable_unsafe_noiommu_mode=1"
                } else {
                    "see `dmesg` for vfio-pci's reason"
                },
            }),
        }
    }

    /// `wgpmd unbind BDF [--driver D]`: clear driver_override and give the device back to `driver`
    /// or the driver remembered by `bind`.
    pub fn unbind(&self, bdf: &str, driver: Option<&str>) -> Result<String, VfioError> {
        let bdf = parse_bdf(bdf)?;
        self.check_exists(&bdf)?;
        let target = match driver.map(str::to_string).or_else(|| self.remembered_driver(&bdf)) {
            Some(d) => d,
            None => return Err(VfioError::NoRememberedDriver { bdf }),
        };
        let dir = self.device_dir(&bdf);
        if self.driver(&bdf).is_some() {
            self.write(&dir.join("driver").join("unbind"), &bdf)?;
        }
        // An empty write clears the override (the kernel takes "\n" as empty).
        self.write(&dir.join("driver_override"), "\n")?;
        self.ensure_driver_loaded(&target, &target.replace('-', "_"))?;
        self.write(&self.path(&format!("sys/bus/pci/drivers/{target}/bind")), &bdf)?;
        let _ = fs::remove_file(self.state_file(&bdf));
        match self.driver(&bdf) {
            Some(d) if d == target => Ok(format!("{bdf}: bound to {target} again")),
            other => Err(VfioError::BindFailed {
                bdf,
                driver: target,
                now: other.unwrap_or_else(|| "no driver".into()),
                hint: "see `dmesg`",
            }),
        }
    }

    /// Check a device can be opened with VFIO: it exists, has an IOMMU group (or no-IOMMU mode
    /// is on), is bound to vfio-pci, and its group is viable (all devices in it on vfio-pci or
    /// unbound). Returns the group number.
    pub fn check_vfio_ready(&self, bdf: &str) -> Result<String, VfioError> {
        self.check_exists(bdf)?;
        let Some(group) = self.iommu_group(bdf) else {
            return Err(VfioError::NoIommuGroup { bdf: bdf.to_string() });
        };
        let drv = self.driver(bdf);
        if drv.as_deref() != Some(VFIO_DRIVER) {
            return Err(VfioError::NotBoundToVfio { bdf: bdf.to_string(), driver: drv });
        }
        let others: Vec<_> = self
            .group_devices(&group)
            .into_iter()
            .filter(|(b, d)| b != bdf && d.as_deref().is_some_and(|d| d != VFIO_DRIVER && d != "pcieport"))
            .collect();
        if !others.is_empty() {
            return Err(VfioError::GroupNotViable { group, others: describe_others(&others) });
        }
        Ok(group)
    }
}

pub(crate) fn describe_others(others: &[(String, Option<String>)]) -> String {
    others
        .iter()
        .map(|(b, d)| format!("{b} (driver {})", d.as_deref().unwrap_or("none")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake root in a fresh temporary directory, removed on drop.
    pub struct FakeRoot(pub PathBuf);
    impl FakeRoot {
        pub fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "vfio-fake-{tag}-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            ));
            fs::create_dir_all(p.join("sys/bus/pci/devices")).unwrap();
            fs::create_dir_all(p.join("sys/bus/pci/drivers")).unwrap();
            fs::create_dir_all(p.join("sys/kernel/iommu_groups")).unwrap();
            fs::create_dir_all(p.join("proc/net")).unwrap();
            fs::write(p.join("proc/net/route"), "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n")
                .unwrap();
            FakeRoot(p)
        }
        pub fn driver(&self, name: &str) {
            fs::create_dir_all(self.0.join(format!("sys/bus/pci/drivers/{name}"))).unwrap();
        }
        /// A device with ids/class, bound to `driver`, in `group`, with interface `iface`.
        pub fn device(
            &self,
            bdf: &str,
            id: (u16, u16),
            class: u32,
            driver: Option<&str>,
            group: Option<&str>,
            iface: Option<&str>,
        ) {
            let d = self.0.join(format!("sys/bus/pci/devices/{bdf}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("vendor"), format!("0x{:04x}\n", id.0)).unwrap();
            fs::write(d.join("device"), format!("0x{:04x}\n", id.1)).unwrap();
            fs::write(d.join("class"), format!("0x{class:06x}\n")).unwrap();
            fs::write(d.join("driver_override"), "(null)\n").unwrap();
            if let Some(drv) = driver {
                self.driver(drv);
                symlink(self.0.join(format!("sys/bus/pci/drivers/{drv}")), d.join("driver")).unwrap();
            }
            if let Some(g) = group {
                let gd = self.0.join(format!("sys/kernel/iommu_groups/{g}"));
                fs::create_dir_all(gd.join("devices")).unwrap();
                symlink(&d, gd.join("devices").join(bdf)).unwrap();
                symlink(&gd, d.join("iommu_group")).unwrap();
            }
            if let Some(i) = iface {
                fs::create_dir_all(d.join("virtio0/net").join(i)).unwrap();
            }
        }
        pub fn default_route(&self, iface: &str) {
            let mut r = fs::read_to_string(self.0.join("proc/net/route")).unwrap();
            r.push_str(&format!("{iface}\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"));
            fs::write(self.0.join("proc/net/route"), r).unwrap();
        }
        pub fn sys(&self) -> Sysfs {
            Sysfs::new(&self.0)
        }
        pub fn read(&self, rel: &str) -> String {
            fs::read_to_string(self.0.join(rel)).unwrap_or_default()
        }
    }
    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn bdf_forms() {
        assert_eq!(parse_bdf("00:02.0").unwrap(), "0000:00:02.0");
        assert_eq!(parse_bdf("0000:0A:1f.7").unwrap(), "0000:0a:1f.7");
        for bad in ["", "eth0", "0000:00:02.8", "0000:00:02", "00:02:0.0", "0000:00:0g.0", "1:2.3"] {
            let e = parse_bdf(bad).unwrap_err().to_string();
            assert!(e.contains("DDDD:BB:DD.F"), "{bad}: {e}");
        }
    }

    #[test]
    fn routes_from_proc() {
        let route = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth1\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth2\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert_eq!(default_route_interfaces(route, v6), vec!["eth0".to_string(), "eth2".to_string()]);
        assert!(default_route_interfaces("", "").is_empty());
    }

    #[test]
    fn status_lists_network_devices_only() {
        let f = FakeRoot::new("status");
        f.device("0000:00:02.0", (0x1af4, 0x1041), 0x020000, Some("virtio-pci"), Some("2"), Some("ens2"));
        f.device("0000:00:03.0", (0x8086, 0x10d3), 0x020000, Some("vfio-pci"), Some("3"), None);
        f.device("0000:00:01.0", (0x8086, 0x2918), 0x060100, None, Some("1"), None);
        f.default_route("ens2");
        let devs = f.sys().net_devices();
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[0].interfaces, vec!["ens2".to_string()]);
        assert!(devs[0].active_route);
        assert_eq!(devs[1].driver.as_deref(), Some("vfio-pci"));
        assert_eq!(devs[1].id, "8086:10d3");
        let t = f.sys().status_text();
        assert!(t.contains("0000:00:02.0  1af4:1041  virtio-pci     2      ens2             default route"), "{t}");
        assert!(!t.contains("0000:00:01.0"), "{t}");
    }

    #[test]
    fn bind_refuses_the_default_route_and_missing_devices() {
        let f = FakeRoot::new("bindroute");
        f.device("0000:00:02.0", (0x1af4, 0x1041), 0x020000, Some("virtio-pci"), Some("2"), Some("ens2"));
        f.default_route("ens2");
        f.driver("vfio-pci");
        let e = f.sys().bind("00:02.0").unwrap_err().to_string();
        assert!(e.contains("carries the host's default route") && e.contains("ens2"), "{e}");
        assert_eq!(f.read("sys/bus/pci/devices/0000:00:02.0/driver_override"), "(null)\n", "nothing written");
        let e = f.sys().bind("0000:00:09.0").unwrap_err().to_string();
        assert!(e.contains("no PCI device 0000:00:09.0"), "{e}");
    }

    #[test]
    fn bind_writes_the_devbind_sequence_and_remembers_the_driver() {
        let f = FakeRoot::new("bind");
        f.device("0000:00:02.0", (0x1af4, 0x1041), 0x020000, Some("virtio-pci"), Some("2"), Some("ens2"));
        let e = f.sys().bind("0000:00:02.0").unwrap_err().to_string();
        assert!(e.contains("vfio-pci") && e.contains("modprobe"), "no vfio-pci driver: {e}");
        f.driver("vfio-pci");
        // The fake kernel does not move the driver link: bind reports it is still on virtio-pci,
        // after having written the whole sequence.
        let e = f.sys().bind("0000:00:02.0").unwrap_err().to_string();
        assert!(e.contains("still bound to virtio-pci"), "{e}");
        assert_eq!(f.read("sys/bus/pci/drivers/virtio-pci/unbind"), "0000:00:02.0");
        assert_eq!(f.read("sys/bus/pci/devices/0000:00:02.0/driver_override"), "vfio-pci");
        assert_eq!(f.read("sys/bus/pci/drivers_probe"), "0000:00:02.0");
        assert_eq!(f.sys().remembered_driver("0000:00:02.0").as_deref(), Some("virtio-pci"));
        // As the kernel would: the device is now on vfio-pci.
        let d = f.0.join("sys/bus/pci/devices/0000:00:02.0/driver");
        fs::remove_file(&d).unwrap();
        symlink(f.0.join("sys/bus/pci/drivers/vfio-pci"), &d).unwrap();
        assert!(f.sys().bind("0000:00:02.0").unwrap().contains("already bound"));
        assert_eq!(f.sys().check_vfio_ready("0000:00:02.0").unwrap(), "2");
        // unbind gives it back to the remembered driver.
        let e = f.sys().unbind("0000:00:02.0", None).unwrap_err().to_string();
        assert!(e.contains("still bound to vfio-pci"), "{e}");
        assert_eq!(f.read("sys/bus/pci/drivers/vfio-pci/unbind"), "0000:00:02.0");
        assert_eq!(f.read("sys/bus/pci/devices/0000:00:02.0/driver_override"), "\n");
        assert_eq!(f.read("sys/bus/pci/drivers/virtio-pci/bind"), "0000:00:02.0");
        assert_eq!(f.sys().remembered_driver("0000:00:02.0"), None, "forgotten after unbind");
        let e = f.sys().unbind("0000:00:02.0", None).unwrap_err().to_string();
        assert!(e.contains("--driver"), "{e}");
    }

    #[test]
    fn vfio_readiness_errors_say_what_to_do() {
        let f = FakeRoot::new("ready");
        f.device("0000:00:02.0", (0x1af4, 0x1041), 0x020000, Some("virtio-pci"), None, None);
        let e = f.sys().check_vfio_ready("0000:00:02.0").unwrap_err().to_string();
        assert!(e.contains("intel_iommu=on") && e.contains("no-IOMMU"), "{e}");
        f.device("0000:00:03.0", (0x1af4, 0x1041), 0x020000, Some("virtio-pci"), Some("3"), None);
        let e = f.sys().check_vfio_ready("0000:00:03.0").unwrap_err().to_string();
        assert!(e.contains("virtio-pci") && e.contains("wgpmd bind 0000:00:03.0"), "{e}");
        f.device("0000:00:04.0", (0x1af4, 0x1041), 0x020000, Some("vfio-pci"), Some("4"), None);
        f.device("0000:00:05.0", (0x8086, 0x10d3), 0x020000, Some("e1000e"), None, None);
        symlink(
            f.0.join("sys/bus/pci/devices/0000:00:05.0"),
            f.0.join("sys/kernel/iommu_groups/4/devices/0000:00:05.0"),
        )
        .unwrap();
        let e = f.sys().check_vfio_ready("0000:00:04.0").unwrap_err().to_string();
        assert!(e.contains("group 4 is not viable") && e.contains("0000:00:05.0 (driver e1000e)"), "{e}");
    }
}
