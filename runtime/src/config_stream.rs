//! The config stream to the controller, as one piece: started with the proxy's identity, its token
//! (`--token-file`, the one the CA takes) and the types it needs, observable (status, a connected
//! gauge), and stopped on shutdown.

use ambit_proto::api;
use ambit_proto::grpc;
use ambit_proto::tls::TrustRoots;
use ambit_proto::xds::{self, ClientStatus, ConfigClient, ConfigHandler};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::flags::ControlPlaneFlags;

pub struct ConfigStream {
    status: watch::Receiver<ClientStatus>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl ConfigStream {
    /// Subscribes `handler` to `types` as `node`; `connected` follows the stream (1 while open).
    pub fn start(
        flags: &ControlPlaneFlags,
        roots: TrustRoots,
        node: api::Node,
        types: &[&str],
        handler: impl ConfigHandler,
        connected: Gauge,
    ) -> anyhow::Result<ConfigStream> {
        let identity = flags.controller_identity()?;
        let settings = xds::ClientSettings::new(node, types, flags.token_file.clone());
        let client = ConfigClient::new(settings, handler);
        let status = client.status();
        let (stop, stopped) = oneshot::channel::<()>();
        let addr = flags.controller_addr;
        let task = tokio::spawn(client.run(
            move || {
                let (roots, identity) = (roots.clone(), identity.clone());
                async move {
                    grpc::connect(addr, &roots, &identity)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
            async move {
                let _ = stopped.await;
            },
        ));
        let mut watched = status.clone();
        tokio::spawn(async move {
            while watched.changed().await.is_ok() {
                let open = watched.borrow_and_update().connected;
                connected.set(i64::from(open));
            }
        });
        Ok(ConfigStream { status, stop, task })
    }

    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.clone()
    }

    /// Closes the stream and waits for its task.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The config stream's state as the admin config dumps show it.
#[derive(Debug, serde::Serialize)]
pub struct ConfigDump {
    pub connected: bool,
    pub synced: bool,
    pub connects: u64,
    pub nacks: u64,
    pub last_error: Option<String>,
    /// How many config changes the proxy has applied.
    pub applied_changes: u64,
}

impl ConfigDump {
    pub fn new(status: ClientStatus, applied_changes: u64) -> Self {
        ConfigDump {
            connected: status.connected,
            synced: status.synced,
            connects: status.connects,
            nacks: status.nacks,
            last_error: status.last_error,
            applied_changes,
        }
    }
}
