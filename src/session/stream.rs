//! [`Session::stream`]: stream operations through a session, ordered with
//! its other renders.

use tracing::Instrument;

use super::Session;
use crate::error::Result;
use crate::fragment::StreamOps;

impl Session {
    /// Applies operations to the page's stream `name` (see [`StreamOps`])
    /// and sends them to every subscriber, in order with the session's
    /// other renders. The session keeps nothing of the items: its data does
    /// not change, its seq does. On error nothing changes and nothing is
    /// sent. Returns the seq.
    ///
    /// ```no_run
    /// # async fn f(session: statetemplate::Session) -> statetemplate::Result<()> {
    /// use statetemplate::StreamAt;
    /// let msg = serde_json::json!({"id": 42, "text": "hello"});
    /// session
    ///     .stream("messages", |s| {
    ///         s.insert(&msg, StreamAt::End).limit(-100);
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn stream(&self, name: &str, ops: impl FnOnce(&mut StreamOps)) -> Result<u64> {
        let mut s = StreamOps::new(name);
        ops(&mut s);
        self.stream_ops(&s).await
    }

    /// [`Session::stream`] with operations built beforehand (to send the
    /// same operations to many sessions).
    pub async fn stream_ops(&self, ops: &StreamOps) -> Result<u64> {
        let span = tracing::debug_span!("session", sid = %self.inner.id.short());
        async {
            let page = self.inner.state.lock().await;
            Ok(self.render_locked(page, |p| p.stream(ops)).await?.0)
        }
        .instrument(span)
        .await
    }
}
