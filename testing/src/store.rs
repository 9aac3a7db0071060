//! Reading a store's watch stream in tests: every item within a deadline.

use std::time::Duration;

use apiserver::store::{Error, Event, WatchStream};
use futures::StreamExt as _;

/// The next item of a store watch, progress included, within 10 s; panics
/// when the watch ends or stays silent.
pub async fn next_item(stream: &mut WatchStream) -> Result<Event, Error> {
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("the watch ended"),
        Err(_) => panic!("no watch event within 10 s"),
    }
}

/// The next change of a store watch (progress skipped), within 10 s each.
pub async fn next_event(stream: &mut WatchStream) -> Result<Event, Error> {
    loop {
        match next_item(stream).await {
            Ok(Event::Progress { .. }) => continue,
            other => return other,
        }
    }
}
