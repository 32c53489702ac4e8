//! The control plane's files (certificates, keys, kubeconfigs) and the command
//! line of each of its components.

use super::*;

/// Files the control plane reads.
pub(super) struct Files {
    ca: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
    kubelet_client_cert: PathBuf,
    kubelet_client_key: PathBuf,
    nodes: Nodes,
}

/// The user the API server authenticates as to kubelets.
pub(super) const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

impl Files {
    pub(super) fn write(dir: &Path, ca: &Ca, ip: IpAddr, nodes: Nodes) -> anyhow::Result<Self> {
        let mut ips = vec![ip, "127.0.0.1".parse()?];
        if nodes == Nodes::Real {
            // In-cluster clients dial the `kubernetes` Service's ClusterIP.
            ips.push(KUBERNETES_SERVICE_IP.parse()?);
        }
        let serving = ca.server(
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &ips,
        )?;
        let kubelet_client = ca.client(KUBELET_CLIENT_USER, &[])?;
        let files = Self {
            ca: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
            kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
            kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
            nodes,
        };
        std::fs::write(&files.ca, ca.cert_pem())?;
        std::fs::write(&files.serving_cert, &serving.cert_pem)?;
        std::fs::write(&files.serving_key, &serving.key_pem)?;
        std::fs::write(&files.kubelet_client_cert, &kubelet_client.cert_pem)?;
        std::fs::write(&files.kubelet_client_key, &kubelet_client.key_pem)?;
        let (sa_key, sa_pub) = pki::key_pair_pem()?;
        std::fs::write(&files.sa_key, sa_key)?;
        std::fs::write(&files.sa_pub, sa_pub)?;
        Ok(files)
    }
}

pub(super) fn etcd_command(dir: &Path, ip: &str) -> Command {
    let mut cmd = Command::new(tool("etcd"));
    let client = format!("http://{ip}:2379");
    let peer = format!("http://{ip}:2380");
    cmd.arg("--name=e2e")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=e2e={peer}"))
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn");
    cmd
}

pub(super) fn apiserver_command(files: &Files, ip: &str) -> Command {
    let mut cmd = Command::new(tool("kube-apiserver"));
    cmd.arg(format!("--etcd-servers=http://{ip}:2379"))
        .arg(format!("--bind-address={ip}"))
        .arg(format!("--advertise-address={ip}"))
        .arg(format!("--secure-port={API_PORT}"))
        .arg(format!("--tls-cert-file={}", files.serving_cert.display()))
        .arg(format!("--tls-private-key-file={}", files.serving_key.display()))
        .arg(format!("--client-ca-file={}", files.ca.display()))
        .arg("--authorization-mode=Node,RBAC")
        .arg("--enable-admission-plugins=NodeRestriction")
        // Logs, exec and port-forward dial the kubelet at its InternalIP: nothing
        // resolves node names through the host's resolver.
        .arg("--kubelet-preferred-address-types=InternalIP")
        .arg(format!(
            "--kubelet-client-certificate={}",
            files.kubelet_client_cert.display()
        ))
        .arg(format!(
            "--kubelet-client-key={}",
            files.kubelet_client_key.display()
        ))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!("--service-account-key-file={}", files.sa_pub.display()))
        .arg(format!(
            "--service-account-signing-key-file={}",
            files.sa_key.display()
        ))
        .arg(match files.nodes {
            Nodes::Simulated => format!("--service-cluster-ip-range={SIM_SERVICE_CIDR}"),
            Nodes::Real => format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        })
        // Real nodes' pods reach the API server through the `kubernetes` Service,
        // whose endpoint the API server keeps; simulated nodes run no pods.
        .arg(match files.nodes {
            Nodes::Simulated => "--endpoint-reconciler-type=none",
            Nodes::Real => "--endpoint-reconciler-type=lease",
        })
        .arg("--enable-priority-and-fairness=false")
        .arg("--profiling=false")
        .arg("--v=0");
    cmd
}

pub(super) fn scheduler_command(kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(tool("kube-scheduler"));
    let kubeconfig = kubeconfig.display();
    cmd.arg(format!("--kubeconfig={kubeconfig}"))
        .arg(format!("--authentication-kubeconfig={kubeconfig}"))
        .arg(format!("--authorization-kubeconfig={kubeconfig}"))
        .arg("--leader-elect=false")
        .arg("--secure-port=0")
        .arg("--profiling=false")
        .arg("--v=0");
    cmd
}

pub(super) fn controller_manager_command(files: &Files, kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(tool("kube-controller-manager"));
    let kubeconfig = kubeconfig.display();
    cmd.arg(format!("--kubeconfig={kubeconfig}"))
        .arg(format!("--authentication-kubeconfig={kubeconfig}"))
        .arg(format!("--authorization-kubeconfig={kubeconfig}"))
        .arg("--use-service-account-credentials=true")
        .arg(format!(
            "--service-account-private-key-file={}",
            files.sa_key.display()
        ))
        .arg(format!("--root-ca-file={}", files.ca.display()))
        .arg("--leader-elect=false")
        .arg("--secure-port=0");
    match files.nodes {
        // No kubelets heartbeat here: the simulated nodes' readiness is set by tests,
        // not by the node lifecycle controller evicting everything after five minutes.
        Nodes::Simulated => {
            cmd.arg("--controllers=*,-node-lifecycle-controller");
        }
        Nodes::Real => {
            cmd.arg("--allocate-node-cidrs=true")
                .arg(format!("--cluster-cidr={CLUSTER_CIDR}"))
                .arg("--node-cidr-mask-size=24")
                .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"));
        }
    }
    cmd.arg("--profiling=false").arg("--v=0");
    cmd
}
