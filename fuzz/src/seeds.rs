//! Well-formed inputs for each target, built with the project's own writers (or byte by byte where the
//! other side writes them: a DHCP server, an NTP server, docker-machine's profile). They start the stable
//! mutation loop deep inside each format; `corpus/` holds what coverage-guided runs found beyond them.
use ferry_contract::gpt::{self, Partition, Table};
use ferry_contract::userdata;

/// The seeds of the target `name` (empty for an unknown name).
pub fn of(name: &str) -> Vec<Vec<u8>> {
    match name {
        "userdata" => userdata_seeds(),
        "gpt" => gpt_seeds(),
        "mbr" => mbr_seeds(),
        "dhcp" => dhcp_seeds(),
        "sntp" => sntp_seeds(),
        "profile" => profile_seeds(),
        "cmdline" => text(&[
            "BOOT_IMAGE=/boot/vmlinuz console=ttyS0 quiet ferry.hostname=default ferry.autologin=0",
            "console=tty0 ip=192.168.100.11::::ferry-1:eth1:off ntpserver=10.0.2.2,pool.ntp.org ferry.bootsync_limit=30",
            "ferry.disk=/dev/vdb ferry.debug.pause=after-label ferry.rescue ferry.bench=poweroff ip=dhcp",
        ]),
        "shares" => text(&["hosthome\t/Users\trw\n", "src\t/src/project\tro\nlogs\t/data/logs\trw\n"]),
        _ => vec![],
    }
}

fn text(lines: &[&str]) -> Vec<Vec<u8>> {
    lines.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn userdata_seeds() -> Vec<Vec<u8>> {
    let bundle = userdata::write(&[
        userdata::dir(".ssh", 0o700),
        userdata::file(".ssh/authorized_keys", 0o644, "ssh-rsa AAAAB3NzaC1yc2E docker-machine\n"),
        userdata::file(".ssh/id_rsa.pub", 0o644, "ssh-rsa AAAAB3NzaC1yc2E docker-machine\n"),
        userdata::file("cert.pem", 0o644, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
    ]);
    // As a format-me disk's head: boot2docker's 4096-byte copy, and the archive followed by zeros.
    let mut legacy = bundle.clone();
    legacy.resize(userdata::LEGACY_TRUNCATED, 0);
    let mut padded = bundle.clone();
    padded.resize(bundle.len() + 8192, 0);
    vec![bundle, legacy, padded, userdata::write(&[])]
}

fn gpt_seeds() -> Vec<Vec<u8>> {
    let sectors = 1 << 21;
    let t = Table {
        disk_guid: gpt::v4([7; 16]),
        sectors,
        partitions: vec![
            Partition { type_guid: gpt::LINUX_FS, unique: gpt::v4([1; 16]), first_lba: 4096, last_lba: sectors - 40, name: "data".into() },
            Partition { type_guid: gpt::LINUX_SWAP, unique: gpt::v4([2; 16]), first_lba: 2048, last_lba: 4095, name: "swap".into() },
        ],
    };
    let mut head = t.protective_mbr(&[]);
    head.extend(t.primary_header_and_entries().unwrap_or_default());
    // The same table, asking the target to mend checksums after mutation (low bit of byte 0).
    let mut mended = head.clone();
    mended[0] = 1;
    vec![head, mended]
}

fn mbr_seeds() -> Vec<Vec<u8>> {
    // boot2docker's own layout: partition 2 swap at the start, partition 1 Linux on the rest.
    let mut s = vec![0u8; 512];
    let mut entry = |i: usize, kind: u8, first: u32, sectors: u32| {
        let e = &mut s[446 + 16 * i..446 + 16 * (i + 1)];
        e[4] = kind;
        e[8..12].copy_from_slice(&first.to_le_bytes());
        e[12..16].copy_from_slice(&sectors.to_le_bytes());
    };
    entry(0, 0x83, 2_050_048, 18_921_472);
    entry(1, 0x82, 2048, 2_048_000);
    s[510..512].copy_from_slice(&[0x55, 0xAA]);
    let mut grown = s.clone();
    grown.extend_from_slice(&(41_943_040u64).to_le_bytes());
    vec![s, grown]
}

fn dhcp_seeds() -> Vec<Vec<u8>> {
    let reply = |kind: u8, options: &[u8]| {
        let mut p = ferry_init::dhcp::build(0x1234_5678, [0x52, 0x54, 0, 0x12, 0x34, 0x56], "ferry", ferry_init::dhcp::Stage::Discover);
        p.truncate(240);
        p[0] = 2;
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p.extend_from_slice(&[53, 1, kind]);
        p.extend_from_slice(options);
        p.push(255);
        p
    };
    let common = [
        &[1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 8, 10, 0, 2, 3, 1, 1, 1, 1, 54, 4, 10, 0, 2, 2][..],
        &[51, 4, 0, 1, 81, 128, 58, 4, 0, 0, 168, 192, 59, 4, 0, 1, 38, 64, 26, 2, 5, 220, 42, 4, 10, 0, 2, 2],
        &[12, 5, b'f', b'e', b'r', b'r', b'y', 15, 4, b'l', b'a', b'b', 0],
        // 119 (search list with a compression pointer), 121 (a classless default and a /24 route).
        &[119, 16, 5, b'f', b'e', b'r', b'r', b'y', 4, b't', b'e', b's', b't', 0, 3, b'l', b'a', b'b'],
        &[121, 13, 0, 10, 0, 2, 2, 24, 192, 168, 100, 10, 0, 2, 2],
    ]
    .concat();
    vec![reply(2, &common), reply(5, &common), reply(6, &[])]
}

fn sntp_seeds() -> Vec<Vec<u8>> {
    let req = ferry_init::sntp::request(1_700_000_000.0);
    let mut p = vec![0u8; 48];
    p[0] = (4 << 3) | 4;
    p[1] = 2;
    p[24..32].copy_from_slice(&req[40..48]);
    // Receive and transmit times a few ms after the request, copied from the request's own encoding.
    p[32..40].copy_from_slice(&req[40..48]);
    p[40..48].copy_from_slice(&req[40..48]);
    p[36] ^= 0x01;
    p[44] ^= 0x02;
    let mut kiss = p.clone();
    kiss[1] = 0;
    kiss[12..16].copy_from_slice(b"RATE");
    vec![p, kiss]
}

fn profile_seeds() -> Vec<Vec<u8>> {
    // What `env -0` prints after docker-machine's profile (boot2docker provisioner) was sourced.
    let env = |vars: &[(&str, &str)]| vars.iter().flat_map(|(k, v)| format!("{k}={v}\0").into_bytes()).collect::<Vec<u8>>();
    vec![
        env(&[
            ("EXTRA_ARGS", "\n--label provider=qemu\n--insecure-registry 10.0.0.0/8\n"),
            ("CACERT", "/var/lib/boot2docker/ca.pem"),
            ("DOCKER_HOST", "'-H tcp://0.0.0.0:2376'"),
            ("DOCKER_STORAGE", "overlay2"),
            ("DOCKER_TLS", "auto"),
            ("SERVERKEY", "/var/lib/boot2docker/server-key.pem"),
            ("SERVERCERT", "/var/lib/boot2docker/server.pem"),
            ("HTTP_PROXY", "http://proxy:3128"),
            ("PWD", "/"),
        ]),
        env(&[("EXTRA_ARGS", "-H tcp://0.0.0.0:2375 --tlsverify --config-file /x.json -D --debug"), ("DOCKER_TLS", "no")]),
    ]
}
