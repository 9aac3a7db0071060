//! `loom-bench store`: the store backends' create throughput and latency.

use std::sync::Arc;

use anyhow::Context as _;
use apiserver::store::{EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, Store};
use loom_testing::{EtcdServer, temp_dir};

use crate::Backend;
use crate::measure::{Measurement, header, measure, report};

#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Which backends to measure.
    #[arg(long, value_enum, default_value = "all")]
    backend: Backend,
    /// Concurrent writers, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 64])]
    concurrency: Vec<usize>,
    /// Creates per run with one writer.
    #[arg(long, default_value_t = 2_000)]
    sequential_count: usize,
    /// Creates per run with several writers.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Bytes per value (a typical task object is about 1 KiB of JSON).
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Use this etcd instead of starting a private one (the private one fsyncs like any etcd).
    #[arg(long)]
    etcd_endpoint: Option<String>,
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let value = bytes::Bytes::from(vec![b'x'; args.value_bytes]);
    header("creates");
    let count_for = |concurrency: usize| {
        if concurrency <= 1 {
            args.sequential_count
        } else {
            args.count
        }
    };
    if matches!(args.backend, Backend::Embedded | Backend::All) {
        for &concurrency in &args.concurrency {
            let (_dir, path) = temp_dir()?;
            let store = Arc::new(
                EmbeddedStore::open(EmbeddedOptions::new(&path)).context("open embedded store")?,
            );
            let s = store.clone();
            let v = value.clone();
            let m = measure(count_for(concurrency), concurrency, move |i| {
                let s = s.clone();
                let v = v.clone();
                async move {
                    s.create(&format!("loom.dev/tasks/bench/task-{i}"), v)
                        .await?;
                    Ok(())
                }
            })
            .await?;
            report("embedded (durable)", concurrency, &m, None);
            if let Ok(store) = Arc::try_unwrap(store) {
                store.close().await;
            }
        }
    }
    if matches!(args.backend, Backend::Etcd | Backend::All) {
        let server;
        let endpoint = match &args.etcd_endpoint {
            Some(endpoint) => endpoint.clone(),
            None => {
                server = EtcdServer::start().await?;
                server.endpoint().to_owned()
            }
        };
        let raw = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .context("connect to etcd")?;
        for (round, &concurrency) in args.concurrency.iter().enumerate() {
            let count = count_for(concurrency);
            let mut options = EtcdOptions::new(vec![endpoint.clone()]);
            options.prefix = format!("/bench-store-{round}/");
            let store = Arc::new(EtcdStore::connect(options).await?);
            // Raw puts before and after the store's creates, so a trend in etcd
            // (its database growing, the machine's load) shows in the baseline too.
            let before = raw_puts(
                &raw,
                &format!("/bench-raw-{round}a/"),
                count,
                concurrency,
                &value,
            )
            .await?;
            report("etcd-client put (raw)", concurrency, &before, None);
            let store_run = {
                let v = value.clone();
                measure(count, concurrency, move |i| {
                    let store = store.clone();
                    let v = v.clone();
                    async move {
                        store
                            .create(&format!("loom.dev/tasks/bench/task-{i}"), v)
                            .await?;
                        Ok(())
                    }
                })
                .await?
            };
            let after = raw_puts(
                &raw,
                &format!("/bench-raw-{round}b/"),
                count,
                concurrency,
                &value,
            )
            .await?;
            report("etcd-client put (raw)", concurrency, &after, None);
            // The same conditional create the store sends, straight through etcd-client:
            // what etcd itself charges for a transaction over a plain put.
            let txn = raw_creates(
                &raw,
                &format!("/bench-txn-{round}/"),
                count,
                concurrency,
                &value,
            )
            .await?;
            report("etcd-client txn (raw)", concurrency, &txn, None);
            let baseline = if before.per_second() >= after.per_second() {
                before
            } else {
                after
            };
            report(
                "etcd store create",
                concurrency,
                &store_run,
                Some(&baseline),
            );
            println!(
                "{:<22} {concurrency:>5} {:>8} {:>10} {:>8} {:>8}  {:.2}x raw txn",
                "",
                "",
                "",
                "",
                "",
                store_run.per_second() / txn.per_second()
            );
        }
    }
    Ok(())
}

/// Plain puts through etcd-client of the same keys and values: the baseline.
pub async fn raw_puts(
    raw: &etcd_client::Client,
    prefix: &str,
    count: usize,
    concurrency: usize,
    value: &bytes::Bytes,
) -> anyhow::Result<Measurement> {
    let client = raw.kv_client();
    let value = value.clone();
    let prefix = prefix.to_owned();
    measure(count, concurrency, move |i| {
        let mut client = client.clone();
        let key = format!("{prefix}loom.dev/tasks/bench/task-{i}");
        let value = value.to_vec();
        async move {
            client.put(key, value, None).await?;
            Ok(())
        }
    })
    .await
}

/// Create-if-absent transactions through etcd-client, as the store's create sends them.
pub async fn raw_creates(
    raw: &etcd_client::Client,
    prefix: &str,
    count: usize,
    concurrency: usize,
    value: &bytes::Bytes,
) -> anyhow::Result<Measurement> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let client = raw.kv_client();
    let value = value.clone();
    let prefix = prefix.to_owned();
    measure(count, concurrency, move |i| {
        let mut client = client.clone();
        let key = format!("{prefix}loom.dev/tasks/bench/task-{i}");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), None)]);
        async move {
            client.txn(txn).await?;
            Ok(())
        }
    })
    .await
}
