//! The delivery engine's connection to the source database, as Sequin's replication would
//! have it. Plain TCP: the emulator is a local test stand-in, never pointed at a managed
//! Postgres.

use tokio_postgres::NoTls;

const APPLICATION_NAME: &str = "sequin-emulator-delivery";

pub(crate) fn config(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.application_name(APPLICATION_NAME);
    Ok(config)
}

pub(crate) async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config(url)?.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "emulator delivery: connection closed");
        }
    });
    Ok(client)
}
