//! Table tests of the pure half: the plan, the steps, parsing and validation. The real
//! iptables runs in `tests/tests/it/transparent.rs` (network namespaces, root).

use super::*;

fn lines(rules: &[Rule]) -> Vec<String> {
    rules.iter().map(ToString::to_string).collect()
}

#[test]
fn default_plan_is_the_documented_ruleset() {
    assert_eq!(
        lines(&plan(&InterceptConfig::default())),
        [
            "-A WARDMESH_INBOUND -p tcp -m tcp --dport 7143 -j RETURN",
            "-A WARDMESH_INBOUND -p tcp -m tcp --dport 7140 -j RETURN",
            "-A WARDMESH_INBOUND -p tcp -m tcp --dport 7191 -j RETURN",
            "-A WARDMESH_INBOUND -p tcp -j REDIRECT --to-ports 7143",
            "-A WARDMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A WARDMESH_OUTPUT -o lo -j RETURN",
            "-A WARDMESH_OUTPUT -d 127.0.0.0/8 -j RETURN",
            "-A WARDMESH_OUTPUT -p tcp -j REDIRECT --to-ports 7140",
            "-A PREROUTING -p tcp -j WARDMESH_INBOUND",
            "-A OUTPUT -p tcp -j WARDMESH_OUTPUT",
        ]
    );
}

#[test]
fn exclusions_and_custom_ports_land_in_their_chains() {
    struct Case {
        name: &'static str,
        cfg: InterceptConfig,
        inbound: &'static [&'static str],
        output: &'static [&'static str],
    }
    let base = InterceptConfig::default();
    let cases = [
        Case {
            name: "excluded inbound ports and a range, before the redirect",
            cfg: InterceptConfig {
                exclude_inbound_ports: vec!["9090".parse().unwrap(), "9000-9010".parse().unwrap()],
                ..base.clone()
            },
            inbound: &[
                "-p tcp -m tcp --dport 7143 -j RETURN",
                "-p tcp -m tcp --dport 7140 -j RETURN",
                "-p tcp -m tcp --dport 7191 -j RETURN",
                "-p tcp -m tcp --dport 9090 -j RETURN",
                "-p tcp -m tcp --dport 9000:9010 -j RETURN",
                "-p tcp -j REDIRECT --to-ports 7143",
            ],
            output: &[
                "-m owner --uid-owner 1337 -j RETURN",
                "-o lo -j RETURN",
                "-d 127.0.0.0/8 -j RETURN",
                "-p tcp -j REDIRECT --to-ports 7140",
            ],
        },
        Case {
            name: "excluded outbound cidrs then ports, after loopback",
            cfg: InterceptConfig {
                exclude_outbound_cidrs: vec![
                    "169.254.169.254".parse().unwrap(),
                    "10.96.7.1/12".parse().unwrap(),
                ],
                exclude_outbound_ports: vec!["5432".parse().unwrap(), "6379:6380".parse().unwrap()],
                ..base.clone()
            },
            inbound: &[
                "-p tcp -m tcp --dport 7143 -j RETURN",
                "-p tcp -m tcp --dport 7140 -j RETURN",
                "-p tcp -m tcp --dport 7191 -j RETURN",
                "-p tcp -j REDIRECT --to-ports 7143",
            ],
            output: &[
                "-m owner --uid-owner 1337 -j RETURN",
                "-o lo -j RETURN",
                "-d 127.0.0.0/8 -j RETURN",
                "-d 169.254.169.254/32 -j RETURN",
                "-d 10.96.0.0/12 -j RETURN",
                "-p tcp -m tcp --dport 5432 -j RETURN",
                "-p tcp -m tcp --dport 6379:6380 -j RETURN",
                "-p tcp -j REDIRECT --to-ports 7140",
            ],
        },
        Case {
            name: "custom ports and uid",
            cfg: InterceptConfig {
                proxy_uid: 2102,
                inbound_port: 4143,
                outbound_port: 4140,
                admin_port: 4191,
                ..base.clone()
            },
            inbound: &[
                "-p tcp -m tcp --dport 4143 -j RETURN",
                "-p tcp -m tcp --dport 4140 -j RETURN",
                "-p tcp -m tcp --dport 4191 -j RETURN",
                "-p tcp -j REDIRECT --to-ports 4143",
            ],
            output: &[
                "-m owner --uid-owner 2102 -j RETURN",
                "-o lo -j RETURN",
                "-d 127.0.0.0/8 -j RETURN",
                "-p tcp -j REDIRECT --to-ports 4140",
            ],
        },
    ];
    for case in cases {
        let rules = plan(&case.cfg);
        let of = |chain: &str| -> Vec<String> {
            rules
                .iter()
                .filter(|r| r.chain == chain)
                .map(|r| r.spec.join(" "))
                .collect()
        };
        assert_eq!(of(INBOUND_CHAIN), case.inbound, "{}: inbound", case.name);
        assert_eq!(of(OUTPUT_CHAIN), case.output, "{}: output", case.name);
        assert_eq!(
            lines(&rules[rules.len() - 2..]),
            lines(&jumps()),
            "{}: jumps come last",
            case.name
        );
    }
}

#[test]
fn rule_argv_for_append_check_delete() {
    let rule = &plan(&InterceptConfig::default())[3];
    assert_eq!(
        rule.append(),
        [
            "-t",
            "nat",
            "-A",
            "WARDMESH_INBOUND",
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            "7143"
        ]
    );
    assert_eq!(rule.check()[2], "-C");
    assert_eq!(rule.delete()[2], "-D");
    assert_eq!(rule.check()[3..], rule.append()[3..]);
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn install_creates_flushes_refills_then_ensures_jumps() {
    let steps = install_steps(&InterceptConfig::default());
    assert_eq!(
        steps[..4],
        [
            Step::Unless {
                check: args(&["-t", "nat", "-S", "WARDMESH_INBOUND"]),
                then: args(&["-t", "nat", "-N", "WARDMESH_INBOUND"]),
            },
            Step::Run(args(&["-t", "nat", "-F", "WARDMESH_INBOUND"])),
            Step::Unless {
                check: args(&["-t", "nat", "-S", "WARDMESH_OUTPUT"]),
                then: args(&["-t", "nat", "-N", "WARDMESH_OUTPUT"]),
            },
            Step::Run(args(&["-t", "nat", "-F", "WARDMESH_OUTPUT"])),
        ]
    );
    let rules = plan(&InterceptConfig::default());
    let appends: Vec<_> = rules
        .iter()
        .filter(|r| !r.is_jump())
        .map(|r| Step::Run(r.append()))
        .collect();
    assert_eq!(steps[4..4 + appends.len()], appends[..]);
    assert_eq!(
        steps[4 + appends.len()..],
        [
            Step::Unless {
                check: args(&[
                    "-t",
                    "nat",
                    "-C",
                    "PREROUTING",
                    "-p",
                    "tcp",
                    "-j",
                    "WARDMESH_INBOUND"
                ]),
                then: args(&[
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-p",
                    "tcp",
                    "-j",
                    "WARDMESH_INBOUND"
                ]),
            },
            Step::Unless {
                check: args(&[
                    "-t",
                    "nat",
                    "-C",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "-j",
                    "WARDMESH_OUTPUT"
                ]),
                then: args(&[
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "-j",
                    "WARDMESH_OUTPUT"
                ]),
            },
        ]
    );
}

#[test]
fn remove_deletes_every_jump_then_the_chains() {
    assert_eq!(
        remove_steps(),
        [
            Step::If {
                check: args(&["-t", "nat", "-S", "WARDMESH_INBOUND"]),
                then: vec![
                    Step::While {
                        check: args(&[
                            "-t",
                            "nat",
                            "-C",
                            "PREROUTING",
                            "-p",
                            "tcp",
                            "-j",
                            "WARDMESH_INBOUND"
                        ]),
                        then: args(&[
                            "-t",
                            "nat",
                            "-D",
                            "PREROUTING",
                            "-p",
                            "tcp",
                            "-j",
                            "WARDMESH_INBOUND"
                        ]),
                    },
                    Step::Run(args(&["-t", "nat", "-F", "WARDMESH_INBOUND"])),
                    Step::Run(args(&["-t", "nat", "-X", "WARDMESH_INBOUND"])),
                ],
            },
            Step::If {
                check: args(&["-t", "nat", "-S", "WARDMESH_OUTPUT"]),
                then: vec![
                    Step::While {
                        check: args(&[
                            "-t",
                            "nat",
                            "-C",
                            "OUTPUT",
                            "-p",
                            "tcp",
                            "-j",
                            "WARDMESH_OUTPUT"
                        ]),
                        then: args(&[
                            "-t",
                            "nat",
                            "-D",
                            "OUTPUT",
                            "-p",
                            "tcp",
                            "-j",
                            "WARDMESH_OUTPUT"
                        ]),
                    },
                    Step::Run(args(&["-t", "nat", "-F", "WARDMESH_OUTPUT"])),
                    Step::Run(args(&["-t", "nat", "-X", "WARDMESH_OUTPUT"])),
                ],
            },
        ]
    );
}

#[test]
fn dry_run_script_is_runnable_shell() {
    let ipt = Iptables::default();
    let install = ipt.script(&install_steps(&InterceptConfig::default()));
    let first: Vec<&str> = install.lines().take(2).collect();
    assert_eq!(
        first,
        [
            "iptables -w 5 -t nat -S WARDMESH_INBOUND >/dev/null 2>&1 || iptables -w 5 -t nat -N WARDMESH_INBOUND",
            "iptables -w 5 -t nat -F WARDMESH_INBOUND",
        ]
    );
    assert!(install.contains(
        "\niptables -w 5 -t nat -A WARDMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"
    ));
    assert!(install.ends_with(
        "iptables -w 5 -t nat -C OUTPUT -p tcp -j WARDMESH_OUTPUT >/dev/null 2>&1 || iptables -w 5 -t nat -A OUTPUT -p tcp -j WARDMESH_OUTPUT\n"
    ));
    let remove = ipt.script(&remove_steps());
    assert_eq!(
        remove.lines().last().unwrap(),
        "if iptables -w 5 -t nat -S WARDMESH_OUTPUT >/dev/null 2>&1; then \
         while iptables -w 5 -t nat -C OUTPUT -p tcp -j WARDMESH_OUTPUT >/dev/null 2>&1; do \
         iptables -w 5 -t nat -D OUTPUT -p tcp -j WARDMESH_OUTPUT; done; \
         iptables -w 5 -t nat -F WARDMESH_OUTPUT; iptables -w 5 -t nat -X WARDMESH_OUTPUT; fi"
    );
    assert_eq!(remove.lines().count(), 2);
}

#[test]
fn port_ranges_parse_and_print_like_iptables() {
    let ok = [
        ("7191", "7191"),
        (" 9000-9100 ", "9000:9100"),
        ("80:81", "80:81"),
        ("5-5", "5"),
    ];
    for (input, printed) in ok {
        assert_eq!(
            input.parse::<PortRange>().unwrap().to_string(),
            printed,
            "{input}"
        );
    }
    for bad in ["0", "65536", "http", "", "1-", "-5", "1-0"] {
        let err = bad.parse::<PortRange>().unwrap_err().to_string();
        assert!(err.contains(&format!("{:?}", bad.trim())), "{bad}: {err}");
    }
    assert!(matches!(
        "90-80".parse::<PortRange>(),
        Err(ParseError::Backwards(_))
    ));
}

#[test]
fn cidrs_parse_normalised() {
    let ok = [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("169.254.169.254", "169.254.169.254/32"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("192.168.1.77/31", "192.168.1.76/31"),
    ];
    for (input, printed) in ok {
        assert_eq!(
            input.parse::<Ipv4Cidr>().unwrap().to_string(),
            printed,
            "{input}"
        );
    }
    for bad in ["10.0.0.0/33", "10.0.0/8", "fd00::/8", "10.0.0.0/", "x"] {
        let err = bad.parse::<Ipv4Cidr>().unwrap_err().to_string();
        assert!(err.contains("not an IPv4 address or CIDR"), "{bad}: {err}");
    }
}

#[test]
fn validation_refuses_configs_that_cannot_work() {
    let ok = InterceptConfig::default();
    ok.validate().unwrap();
    let same = InterceptConfig {
        outbound_port: 7143,
        ..ok.clone()
    };
    assert_eq!(
        same.validate().unwrap_err().to_string(),
        "the inbound and outbound ports are both 7143; the agent needs distinct inbound, \
         outbound and admin ports"
    );
    let zero = InterceptConfig {
        admin_port: 0,
        ..ok.clone()
    };
    assert_eq!(zero.validate(), Err(ConfigError::ZeroPort("admin")));
    let root = InterceptConfig { proxy_uid: 0, ..ok };
    assert_eq!(root.validate(), Err(ConfigError::RootUid));
}

fn parse(argv: &[&str]) -> Result<InitIptablesArgs, clap::Error> {
    use clap::Parser;
    let cli = crate::cli::Cli::try_parse_from(
        ["wardmesh-agent", "init-iptables"]
            .iter()
            .chain(argv)
            .copied(),
    )?;
    match cli.command {
        crate::cli::Command::InitIptables(args) => Ok(args),
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn cli_flags_map_onto_the_config() {
    let defaults = parse(&[]).unwrap();
    assert_eq!(defaults.config().unwrap(), InterceptConfig::default());
    assert!(!defaults.remove && !defaults.dry_run);
    assert_eq!(defaults.iptables, "iptables");

    let args = parse(&[
        "--proxy-uid",
        "2102",
        "--inbound-port",
        "4143",
        "--outbound-port",
        "4140",
        "--admin-port",
        "4191",
        "--exclude-inbound-ports",
        "9090,9000-9010",
        "--exclude-outbound-ports",
        "5432",
        "--exclude-outbound-ports",
        "6379-6380",
        "--exclude-outbound-cidrs",
        "10.0.0.0/8,169.254.169.254",
        "--remove",
        "--dry-run",
        "--iptables",
        "iptables-legacy",
    ])
    .unwrap();
    let cfg = args.config().unwrap();
    assert_eq!(
        (
            cfg.proxy_uid,
            cfg.inbound_port,
            cfg.outbound_port,
            cfg.admin_port
        ),
        (2102, 4143, 4140, 4191)
    );
    let shown = |v: &[PortRange]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(shown(&cfg.exclude_inbound_ports), ["9090", "9000:9010"]);
    assert_eq!(shown(&cfg.exclude_outbound_ports), ["5432", "6379:6380"]);
    let cidrs: Vec<String> = cfg
        .exclude_outbound_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(cidrs, ["10.0.0.0/8", "169.254.169.254/32"]);
    assert!(args.remove && args.dry_run);
    assert_eq!(args.iptables, "iptables-legacy");
}

#[test]
fn cli_refuses_bad_values_with_the_reason() {
    let err = parse(&["--exclude-inbound-ports", "9090,http"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"http\" is not a port"), "{err}");
    let err = parse(&["--exclude-outbound-cidrs", "10.0.0.0/40"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not an IPv4 address or CIDR"), "{err}");
    let same = parse(&["--outbound-port", "7191"])
        .unwrap()
        .config()
        .unwrap_err();
    assert!(
        same.to_string()
            .contains("outbound and admin ports are both 7191"),
        "{same}"
    );
}
