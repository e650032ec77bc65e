//! The exact commands each kind of listener produces.

use super::*;

fn config(extra: &str) -> Config {
    let text = format!(
        "instance: t1\nforwarding: {{ mark: 4919 }}\nbackends:\n  - address: \"10.0.0.2:1080-1082\"\n  - address: \"[fd00::2]:1080\"\n  - address: \"127.0.0.1:1090\"\n  - address: \"proxy.example:1080\"\n{extra}"
    );
    Config::parse(&text).expect("test config is valid")
}

fn lines(cmds: &[Argv]) -> Vec<String> {
    cmds.iter().map(|c| shell_line(c)).collect()
}

#[test]
fn socks5_only_config_needs_no_rules() {
    assert!(Plan::for_config(&config("")).is_empty());
}

#[test]
fn ipv4_redirect_listener_gets_a_nat_chain_with_exclusions_then_jumps() {
    let c = config("listeners: [{ name: r, mode: redirect, bind: \"127.0.0.1:12345\" }]\n");
    assert_eq!(
        lines(&Plan::for_config(&c).add_commands()),
        [
            "iptables -w -t nat -N BALANCER-t1",
            "iptables -w -t nat -A BALANCER-t1 -m mark --mark 4919 -j RETURN",
            "iptables -w -t nat -A BALANCER-t1 -m addrtype --dst-type LOCAL -j RETURN",
            "iptables -w -t nat -A BALANCER-t1 -d 10.0.0.2 -p tcp --dport 1080:1082 -j RETURN",
            "iptables -w -t nat -A BALANCER-t1 -p tcp -j REDIRECT --to-ports 12345",
            "iptables -w -t nat -A OUTPUT -p tcp -j BALANCER-t1",
            "iptables -w -t nat -A PREROUTING -p tcp -j BALANCER-t1",
        ]
    );
}

#[test]
fn dual_stack_redirect_listener_gets_ip6tables_rules_with_only_ipv6_backends() {
    let c = config("listeners: [{ name: r, mode: redirect, bind: \"[::]:12345\" }]\n");
    let cmds = lines(&Plan::for_config(&c).add_commands());
    assert_eq!(cmds.len(), 14);
    assert!(cmds.contains(
        &"ip6tables -w -t nat -A BALANCER-t1 -d fd00::2 -p tcp --dport 1080 -j RETURN".to_owned()
    ));
    assert!(
        !cmds
            .iter()
            .any(|l| l.starts_with("ip6tables") && l.contains("10.0.0.2"))
    );
    assert!(
        !cmds
            .iter()
            .any(|l| l.starts_with("iptables ") && l.contains("fd00::2"))
    );
}

#[test]
fn tproxy_listener_gets_mangle_rules_mark_rule_and_local_route() {
    let c = config(
        "listeners: [{ name: t, mode: tproxy, bind: \"10.0.0.1:12346\" }]\ntransparent: { tproxy_mark: 2, route_table: 102 }\n",
    );
    let cmds = lines(&Plan::for_config(&c).add_commands());
    assert_eq!(
        &cmds[4..],
        [
            "iptables -w -t mangle -A BALANCER-t1 -p tcp -m socket --transparent -j MARK --set-mark 2",
            "iptables -w -t mangle -A BALANCER-t1 -p tcp -m socket --transparent -j RETURN",
            "iptables -w -t mangle -A BALANCER-t1 -p tcp -j TPROXY --on-port 12346 --on-ip 10.0.0.1 --tproxy-mark 2",
            "iptables -w -t mangle -A PREROUTING -p tcp -j BALANCER-t1",
            "ip -4 rule add fwmark 2 lookup 102",
            "ip -4 route add local 0.0.0.0/0 dev lo table 102",
        ]
    );
    assert_eq!(cmds[0], "iptables -w -t mangle -N BALANCER-t1");
}

#[test]
fn removal_deletes_jumps_before_the_chain_and_never_single_chain_rules() {
    let c = config("listeners: [{ name: t, mode: tproxy, bind: \"0.0.0.0:12346\" }]\n");
    assert_eq!(
        lines(&Plan::for_config(&c).delete_commands()),
        [
            "ip -4 route del local 0.0.0.0/0 dev lo table 100",
            "ip -4 rule del fwmark 1 lookup 100",
            "iptables -w -t mangle -D PREROUTING -p tcp -j BALANCER-t1",
            "iptables -w -t mangle -F BALANCER-t1",
            "iptables -w -t mangle -X BALANCER-t1",
        ]
    );
}

#[test]
fn checks_use_exit_status_for_iptables_and_output_for_ip() {
    let c = config("listeners: [{ name: t, mode: tproxy, bind: \"[::1]:12346\" }]\n");
    let plan = Plan::for_config(&c);
    let checks: Vec<_> = plan.items.iter().map(Item::check).collect();
    assert_eq!(
        checks[0],
        Check::Succeeds(argv([
            "ip6tables",
            "-w",
            "-t",
            "mangle",
            "-S",
            "BALANCER-t1"
        ]))
    );
    assert!(matches!(&checks[2], Check::Succeeds(a) if a[4] == "-C"));
    assert_eq!(
        checks.last(),
        Some(&Check::PrintsSomething(argv([
            "ip", "-6", "route", "show", "table", "100", "type", "local", "::/0"
        ])))
    );
}

#[test]
fn shell_line_quotes_only_words_that_need_it() {
    assert_eq!(
        shell_line(&argv(["a", "b c", "it's", ""])),
        r#"a 'b c' 'it'\''s' ''"#
    );
}
