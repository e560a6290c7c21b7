use std::sync::Arc;
pub struct Context {
    pub settings: tokio::sync::watch::Receiver<Arc<crate::server::Settings>>,
    pub spool: crate::queue::Spool,
    pub accepted: tokio::sync::mpsc::UnboundedSender<crate::queue::Envelope>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub sessions: Arc<tokio::sync::Semaphore>,
}
pub async fn serve(
    _l: tokio::net::TcpListener,
    _c: Arc<Context>,
    _s: crate::shutdown::Shutdown,
    _d: std::time::Duration,
) {
}
