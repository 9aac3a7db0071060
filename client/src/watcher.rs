//! The one watch loop: list, then watch from the list's resourceVersion; resume
//! from the last resourceVersion seen after a dropped stream; relist on 410 Gone;
//! follow bookmarks; back off on errors; never stop and never skip an event.

use std::time::Duration;

use api_types::WatchEvent;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::api::{Api, ListParams, Object, WatchParams};
use crate::error::Error;

/// What a watcher reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<K> {
    /// An object was created or changed.
    Apply(K),
    /// An object was deleted (its last state).
    Delete(K),
    /// A (re)list starts: the objects until `InitDone` are the whole state.
    Init,
    /// An object of the (re)list.
    InitApply(K),
    /// The (re)list is complete.
    InitDone,
}

/// How a watcher watches.
#[derive(Clone, Debug)]
pub struct Config {
    /// Only objects whose labels match.
    pub label_selector: Option<String>,
    /// Only objects whose fields match.
    pub field_selector: Option<String>,
    /// Objects per list page.
    pub page_size: u32,
    /// How long one watch request lasts before it is renewed.
    pub timeout_seconds: u32,
    /// The first delay after an error; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest delay after errors.
    pub max_backoff: Duration,
    /// A watch that brings nothing, not even a bookmark, for this long is
    /// taken for dead and made again: a connection cut by a partition may
    /// never be reset or closed (the API server sends a bookmark every 10 s).
    pub idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            label_selector: None,
            field_selector: None,
            page_size: 500,
            timeout_seconds: 290,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Only objects whose labels match.
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_owned());
        self
    }

    /// Only objects whose fields match (e.g. `spec.nodeName=n1`).
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_owned());
        self
    }
}

/// Exponential backoff with a little jitter.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // Up to 25 % jitter, so many clients do not retry in step.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        base + base.mul_f64(f64::from(nanos % 250) / 1000.0)
    }
}

/// The events of a kind: the current state as `Init`…`InitDone`, then every
/// change; errors are reported as items and the stream carries on.
pub fn watcher<K: Object>(
    api: Api<K>,
    config: Config,
) -> impl Stream<Item = Result<Event<K>, Error>> + Send {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run(api, config, tx));
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// Sends or stops: the consumer dropped the stream.
macro_rules! send {
    ($tx:expr, $item:expr) => {
        if $tx.send($item).await.is_err() {
            return;
        }
    };
}

async fn run<K: Object>(api: Api<K>, config: Config, tx: mpsc::Sender<Result<Event<K>, Error>>) {
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    let watch_params = WatchParams {
        label_selector: config.label_selector.clone(),
        field_selector: config.field_selector.clone(),
        bookmarks: true,
        timeout_seconds: Some(config.timeout_seconds),
        ..WatchParams::default()
    };
    'relist: loop {
        send!(tx, Ok(Event::Init));
        let mut params = ListParams {
            label_selector: config.label_selector.clone(),
            field_selector: config.field_selector.clone(),
            limit: Some(config.page_size),
            ..Default::default()
        };
        let mut resource_version = loop {
            match api.list(&params).await {
                Ok(page) => {
                    for item in page.items {
                        send!(tx, Ok(Event::InitApply(item)));
                    }
                    match Some(page.metadata.continue_).filter(|c| !c.is_empty()) {
                        Some(token) => params.continue_token = Some(token),
                        None => break page.metadata.resource_version,
                    }
                }
                Err(error) => {
                    send!(tx, Err(error));
                    tokio::time::sleep(backoff.delay()).await;
                    continue 'relist;
                }
            }
        };
        send!(tx, Ok(Event::InitDone));
        backoff.reset();
        loop {
            if tx.is_closed() {
                // Nobody listens any more (a finished wait): stop watching.
                return;
            }
            let stream = match api.watch(&watch_params, &resource_version).await {
                Ok(stream) => stream,
                Err(error) if error.is_gone() => continue 'relist,
                Err(error) => {
                    send!(tx, Err(error));
                    tokio::time::sleep(backoff.delay()).await;
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                // A consumer that went away (a finished wait) ends the watch now,
                // not at its next event.
                let item = tokio::select! {
                    item = stream.next() => item,
                    () = tx.closed() => return,
                    // Silent for too long: watch again from where it got to
                    // (after a partition the old connection may stay open,
                    // and dead, until the server's own timeout, minutes on).
                    () = tokio::time::sleep(config.idle_timeout) => break,
                };
                let Some(item) = item else { break };
                match item {
                    Ok(WatchEvent::Added(object) | WatchEvent::Modified(object)) => {
                        resource_version = object.meta().resource_version.clone();
                        backoff.reset();
                        send!(tx, Ok(Event::Apply(object)));
                    }
                    Ok(WatchEvent::Deleted(object)) => {
                        resource_version = object.meta().resource_version.clone();
                        backoff.reset();
                        send!(tx, Ok(Event::Delete(object)));
                    }
                    Ok(WatchEvent::Bookmark(bookmark)) => {
                        resource_version = bookmark.metadata.resource_version;
                    }
                    // Too old: the state must be listed again, or events would be missed.
                    Ok(WatchEvent::Error(status)) if status.code == 410 => continue 'relist,
                    Ok(WatchEvent::Error(status)) => {
                        send!(tx, Err(Error::Api(Box::new(status))));
                        tokio::time::sleep(backoff.delay()).await;
                        break;
                    }
                    Err(error) => {
                        send!(tx, Err(error));
                        tokio::time::sleep(backoff.delay()).await;
                        break;
                    }
                }
            }
            // The stream ended (timeout, restart): watch again from where it got to.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.delay()).collect();
        for (delay, base) in delays.iter().zip([100, 200, 400, 800, 800, 800]) {
            let base = Duration::from_millis(base);
            assert!(
                *delay >= base && *delay <= base.mul_f64(1.25),
                "{delay:?} vs {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.delay() < Duration::from_millis(126));
    }
}
