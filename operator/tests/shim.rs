//! nno-cni-shim keeps its own copies of two facts to stay free of this crate: the
//! interface-name rule and the readiness socket's default path. They must agree.

use nno_cni_shim::cni;

#[test]
fn the_shim_checks_interface_names_as_the_operator_does() {
    let names = [
        "",
        "a",
        "eth0",
        "br-gw",
        "vxlan16777215",
        "a-name-of-16-byt",
        "br/0",
        "br:0",
        "br 0",
        "br\t0",
        ".",
        "..",
        "...",
        "x.y",
        "é",
        "ééééééé",
        "éééééééé",
    ];
    for name in names {
        assert_eq!(
            cni::check_interface_name(name).is_ok(),
            nno::linux::check_interface_name(name).is_ok(),
            "{name:?}"
        );
    }
}

#[test]
fn the_shim_asks_where_the_agent_serves() {
    assert_eq!(cni::DEFAULT_SOCKET, nno::readiness::DEFAULT_SOCKET);
}
