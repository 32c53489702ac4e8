//! One real control plane per test: etcd, kube-apiserver (TLS, RBAC, service-account
//! tokens) and kube-controller-manager (garbage collection, namespace deletion,
//! service accounts), bound to the test's own underlay address.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};

use crate::pki::{self, Ca, CertPair};
use crate::process::Process;
use crate::tools::tool;
use crate::underlay::Underlay;

mod commands;
use commands::*;

const NAD_CRD: &str = include_str!("../../manifests/network-attachment-definition-crd.yaml");
const API_PORT: u16 = 6443;
const STARTUP: Duration = Duration::from_secs(90);
/// Field manager of everything the harness itself applies.
pub const MANAGER: &str = "nno.dev/e2e";

/// Pods of a cluster with real nodes: kube-controller-manager gives each node a /24
/// of it (`Node.spec.podCIDR`). Inside 198.18.0.0/15; such clusters take their
/// underlay from 198.18.0.0/16, so neither range ever overlaps their own underlay.
pub const CLUSTER_CIDR: &str = "198.19.0.0/17";
/// Service ClusterIPs of a cluster with real nodes; the first is `kubernetes`.
pub const SERVICE_CIDR: &str = "198.19.128.0/20";
/// The `kubernetes` Service's ClusterIP (in the API server's certificate).
pub const KUBERNETES_SERVICE_IP: &str = "198.19.128.1";
/// Service ClusterIPs of a cluster with simulated nodes: allocated from, never routed to.
const SIM_SERVICE_CIDR: &str = "10.96.0.0/24";

/// What kind of nodes a cluster is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nodes {
    /// Namespace-nodes whose Node objects the tests write ([`crate::node::SimNode`]).
    Simulated,
    /// Real kubelets ([`crate::kubelet::KubeletNode`]): the control plane also runs
    /// kube-scheduler, allocates pod CIDRs, runs the node lifecycle controller,
    /// maintains the `kubernetes` Service's endpoints, authorizes kubelets with the
    /// Node authorizer and NodeRestriction, and reaches them by InternalIP.
    Real,
}

/// How a kubeconfig authenticates.
pub enum Credentials<'a> {
    ClientCert(&'a CertPair),
    Token(&'a str),
}

/// A running control plane. Dropping it stops every process, deletes the underlay
/// bridge and removes the working directory.
pub struct Cluster {
    // Field order is drop order: processes, then the bridge they bind to, then files.
    processes: Vec<Process>,
    pub underlay: Underlay,
    dir: tempfile::TempDir,
    ca: Ca,
    admin_kubeconfig: PathBuf,
    client: kube::Client,
    files: Files,
    restarts: u32,
    nodes: Nodes,
}

impl Cluster {
    /// Starts etcd, kube-apiserver and kube-controller-manager for simulated nodes,
    /// waits until they serve, and installs the operator's CRDs and the multus
    /// NetworkAttachmentDefinition CRD.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_for(Nodes::Simulated).await
    }

    /// Like [`Cluster::start`], for `nodes`.
    pub async fn start_for(nodes: Nodes) -> anyhow::Result<Self> {
        let started = Instant::now();
        crate::kubelet::sweep_stale();
        let underlay = match nodes {
            Nodes::Simulated => Underlay::allocate()?,
            Nodes::Real => Underlay::allocate_in(0..256)?,
        };
        let dir = tempfile::Builder::new().prefix("nno-e2e-").tempdir()?;
        // Whose cluster this is: the next start sweeps it if this process was killed.
        std::fs::write(dir.path().join("owner"), std::process::id().to_string())?;
        let ip = underlay.host_addr();
        let ca = Ca::new("nno-e2e-ca")?;
        let files = Files::write(dir.path(), &ca, ip.into(), nodes)?;

        let ip_s = ip.to_string();
        let etcd = Process::spawn("etcd", etcd_command(dir.path(), &ip_s), dir.path())?;
        let apiserver = Process::spawn("kube-apiserver", apiserver_command(&files, &ip_s), dir.path())?;
        let processes = vec![etcd, apiserver];

        let server = format!("https://{ip}:{API_PORT}");
        let admin = ca.client("nno-e2e-admin", &["system:masters"])?;
        let admin_kubeconfig = dir.path().join("admin.kubeconfig");
        write_kubeconfig(
            &admin_kubeconfig,
            &server,
            &ca.cert_pem(),
            Credentials::ClientCert(&admin),
        )?;
        let kcm_cert = ca.client("system:kube-controller-manager", &[])?;
        let kcm_kubeconfig = dir.path().join("kube-controller-manager.kubeconfig");
        write_kubeconfig(
            &kcm_kubeconfig,
            &server,
            &ca.cert_pem(),
            Credentials::ClientCert(&kcm_cert),
        )?;

        let client = client_from(&admin_kubeconfig).await?;
        let mut cluster = Self {
            processes,
            underlay,
            dir,
            ca,
            admin_kubeconfig,
            client,
            files,
            restarts: 0,
            nodes,
        };
        cluster.wait_ready().await?;
        cluster.processes.push(Process::spawn(
            "kube-controller-manager",
            controller_manager_command(&cluster.files, &kcm_kubeconfig),
            cluster.dir.path(),
        )?);
        if nodes == Nodes::Real {
            let scheduler = cluster.ca.client("system:kube-scheduler", &[])?;
            let scheduler_kubeconfig = cluster.dir.path().join("kube-scheduler.kubeconfig");
            write_kubeconfig(
                &scheduler_kubeconfig,
                &server,
                &cluster.ca.cert_pem(),
                Credentials::ClientCert(&scheduler),
            )?;
            cluster.processes.push(Process::spawn(
                "kube-scheduler",
                scheduler_command(&scheduler_kubeconfig),
                cluster.dir.path(),
            )?);
            cluster.allow_apiserver_to_kubelets().await?;
        }
        cluster.install_crds().await?;
        cluster.wait_controller_manager().await?;
        tracing::info!(server, elapsed = ?started.elapsed(), "test cluster ready");
        Ok(cluster)
    }

    /// Stops kube-apiserver, to test what components do during an outage.
    pub fn stop_apiserver(&mut self) {
        if let Some(i) = self
            .processes
            .iter()
            .position(|p| p.name.starts_with("kube-apiserver"))
        {
            let mut apiserver = self.processes.remove(i);
            apiserver.stop(Duration::from_secs(5));
        }
    }

    /// Starts kube-apiserver again after [`Cluster::stop_apiserver`] and waits until
    /// it is ready.
    pub async fn start_apiserver(&mut self) -> anyhow::Result<()> {
        self.restarts += 1;
        let ip = self.underlay.host_addr().to_string();
        let name = format!("kube-apiserver-{}", self.restarts);
        let apiserver = Process::spawn(&name, apiserver_command(&self.files, &ip), self.dir.path())?;
        self.processes.push(apiserver);
        self.wait_ready().await
    }

    /// The kind of nodes this cluster is for.
    pub fn nodes(&self) -> Nodes {
        self.nodes
    }

    /// The cluster CA (to sign node and component certificates).
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The API server reaches kubelets (logs, exec, port-forward) with its client
    /// certificate as user `kube-apiserver-kubelet-client`, which the kubelets
    /// authorize through SubjectAccessReviews: bind it to the built-in
    /// `system:kubelet-api-admin`, as kubeadm does.
    async fn allow_apiserver_to_kubelets(&self) -> anyhow::Result<()> {
        use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
        let api: Api<ClusterRoleBinding> = Api::all(self.client.clone());
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "nno-e2e:kube-apiserver-kubelet-client"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBELET_CLIENT_USER}],
        });
        api.patch(
            "nno-e2e:kube-apiserver-kubelet-client",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&binding),
        )
        .await?;
        Ok(())
    }

    /// A client with cluster-admin rights.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The API server URL, reachable from the host and from the underlay.
    pub fn server(&self) -> String {
        format!("https://{}:{API_PORT}", self.underlay.host_addr())
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem()
    }

    /// A working directory that lives as long as the cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubeconfig (and client) for a user authenticated by a client certificate.
    pub async fn user(&self, user: &str, groups: &[&str]) -> anyhow::Result<(PathBuf, kube::Client)> {
        let cert = self.ca.client(user, groups)?;
        let path = self.dir.path().join(format!("user-{user}.kubeconfig"));
        write_kubeconfig(
            &path,
            &self.server(),
            &self.ca.cert_pem(),
            Credentials::ClientCert(&cert),
        )?;
        let client = client_from(&path).await?;
        Ok((path, client))
    }

    /// A kubeconfig (and client) authenticated as ServiceAccount `namespace/name`, by a
    /// bound token from the TokenRequest API, the way pods authenticate. Creates the
    /// namespace and the ServiceAccount when missing; grants nothing.
    pub async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<(PathBuf, kube::Client)> {
        self.service_account_token(namespace, name, None).await
    }

    /// Like [`Cluster::service_account`], with the token bound to Node `node`: the API
    /// server then authenticates it with the node's name in the user's extra
    /// (`authentication.kubernetes.io/node-name`), as it does the token of a pod
    /// scheduled there.
    pub async fn service_account_on_node(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
    ) -> anyhow::Result<(PathBuf, kube::Client)> {
        self.service_account_token(namespace, name, Some(("Node", node)))
            .await
    }

    /// Like [`Cluster::service_account`], with the token bound to Pod `pod` of the
    /// same namespace (a pod's own projected token): the user's extra then names the
    /// pod and, once it is scheduled, its node.
    pub async fn service_account_in_pod(
        &self,
        namespace: &str,
        name: &str,
        pod: &str,
    ) -> anyhow::Result<(PathBuf, kube::Client)> {
        self.service_account_token(namespace, name, Some(("Pod", pod)))
            .await
    }

    /// A token of `namespace/name`, bound to an object (`kind`, `name`) when given.
    async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        bound: Option<(&str, &str)>,
    ) -> anyhow::Result<(PathBuf, kube::Client)> {
        use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::{Namespace, Pod};
        let params = PatchParams::apply(MANAGER);
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        namespaces.patch(namespace, &params, &Patch::Apply(&ns)).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let sa =
            serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        accounts.patch(name, &params, &Patch::Apply(&sa)).await?;
        let bound_object_ref = match bound {
            Some((kind, object)) => {
                let meta = match kind {
                    "Node" => Api::<Node>::all(self.client.clone())
                        .get(object)
                        .await
                        .map(|n| n.metadata),
                    _ => Api::<Pod>::namespaced(self.client.clone(), namespace)
                        .get(object)
                        .await
                        .map(|p| p.metadata),
                }
                .map_err(|e| anyhow::anyhow!("{kind} {object} to bind a token to: {e}"))?;
                Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some(kind.into()),
                    name: Some(object.into()),
                    uid: meta.uid,
                })
            }
            None => None,
        };
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600 * 24),
                bound_object_ref,
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &Default::default(), &request)
            .await?;
        let token = token
            .status
            .and_then(|s| s.token)
            .ok_or_else(|| anyhow::anyhow!("TokenRequest returned no token"))?;
        let path = match bound {
            Some((kind, object)) => self
                .dir
                .path()
                .join(format!("sa-{namespace}-{name}-{kind}-{object}.kubeconfig")),
            None => self.dir.path().join(format!("sa-{namespace}-{name}.kubeconfig")),
        };
        write_kubeconfig(
            &path,
            &self.server(),
            &self.ca.cert_pem(),
            Credentials::Token(&token),
        )?;
        let client = client_from(&path).await?;
        Ok((path, client))
    }

    /// Runs the pinned kubectl against this cluster as admin.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .output()?;
        Ok(out)
    }

    /// Like [`Cluster::kubectl`], but fails unless kubectl succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl(args)?;
        if !out.status.success() {
            anyhow::bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP;
        let mut last_err = String::new();
        while Instant::now() < deadline {
            self.check_alive()?;
            let req = http::Request::get("/readyz").body(Vec::new())?;
            match self.client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last_err = body,
                Err(e) => last_err = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!(
            "kube-apiserver not ready after {STARTUP:?}: {last_err}\n{}",
            self.logs()
        )
    }

    async fn install_crds(&self) -> anyhow::Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let nad: CustomResourceDefinition = serde_yaml::from_str(NAD_CRD)?;
        let mut crds = nno::api::crds();
        crds.push(nad);
        let params = PatchParams::apply(MANAGER).force();
        for crd in &crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(&name, &params, &Patch::Apply(crd))
                .await
                .map_err(|e| anyhow::anyhow!("installing CRD {name}: {e}"))?;
        }
        for crd in &crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let established = await_condition(api.clone(), &name, conditions::is_crd_established());
            tokio::time::timeout(Duration::from_secs(30), established)
                .await
                .map_err(|_| anyhow::anyhow!("CRD {name} not established after 30s"))??;
        }
        Ok(())
    }

    /// The controller manager is working once the service-account controller has
    /// created the default ServiceAccount.
    async fn wait_controller_manager(&mut self) -> anyhow::Result<()> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), "default");
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            self.check_alive()?;
            if api.get_opt("default").await?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!(
            "kube-controller-manager did not create default/default within {STARTUP:?}\n{}",
            self.logs()
        )
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.processes {
            if let Some(status) = p.exited() {
                anyhow::bail!("{} exited ({status}):\n{}", p.name, p.log_tail(30));
            }
        }
        Ok(())
    }

    /// The tail of every component's log.
    pub fn logs(&self) -> String {
        self.processes
            .iter()
            .map(|p| format!("--- {} ({})\n{}\n", p.name, p.log.display(), p.log_tail(20)))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed; control plane logs:\n{}", self.logs());
        }
        // Stop in reverse start order: controller manager, API server, etcd.
        while let Some(mut p) = self.processes.pop() {
            p.stop(Duration::from_secs(2));
        }
    }
}

/// Writes a kubeconfig for `server`.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    creds: Credentials<'_>,
) -> anyhow::Result<()> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = match creds {
        Credentials::ClientCert(pair) => serde_json::json!({
            "client-certificate-data": b64(&pair.cert_pem),
            "client-key-data": b64(&pair.key_pem),
        }),
        Credentials::Token(token) => serde_json::json!({ "token": token }),
    };
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "nno-e2e", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "nno-e2e", "context": {"cluster": "nno-e2e", "user": "user"}}],
        "current-context": "nno-e2e",
    });
    std::fs::write(path, serde_yaml::to_string(&config)?)?;
    Ok(())
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}
