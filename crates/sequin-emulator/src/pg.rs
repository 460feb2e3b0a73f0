//! The delivery engine's connection to the source database, as Sequin's replication would
//! have it. Plain TCP: the emulator is a local test stand-in, never pointed at a managed
//! Postgres, so TLS settings in the URL (which tokio-postgres cannot honour without a TLS
//! connector) are dropped rather than refused.

use tokio_postgres::NoTls;

const APPLICATION_NAME: &str = "sequin-emulator-delivery";

pub(crate) fn config(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = without_tls_params(url).parse()?;
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

fn without_tls_params(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != "sslmode" && k != "sslrootcert")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    parsed.set_query(None);
    if !kept.is_empty() {
        parsed.query_pairs_mut().extend_pairs(kept);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tls_settings_are_dropped_and_the_rest_kept() {
        assert_eq!(
            super::without_tls_params("postgres://u@h:5432/db?sslmode=require&connect_timeout=5"),
            "postgres://u@h:5432/db?connect_timeout=5"
        );
        assert_eq!(
            super::without_tls_params("postgres://u@h/db?sslmode=verify-full"),
            "postgres://u@h/db"
        );
    }
}
