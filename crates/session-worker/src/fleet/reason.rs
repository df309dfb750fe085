//! The driver's snake_case reason codes as the bus contract's [`ReasonCode`]s.

use wafleet_bus_schema::v1::ReasonCode;

/// The bus reason for a driver reason code (`DriverEvent::Disconnected` / `Failed`).
///
/// Codes the contract has no word for (network and transport failures) are
/// `CONNECTION_LOST`; anything unknown is `INTERNAL_FAILURE`, so no reason is dropped.
pub fn bus_reason(code: &str) -> ReasonCode {
    match code {
        "replaced" => ReasonCode::Replaced,
        "logged_out" | "main_device_gone" => ReasonCode::LoggedOut,
        "qr_exhausted" => ReasonCode::QrExhausted,
        "client_outdated" => ReasonCode::ClientOutdated,
        "temporarily_banned" | "banned" => ReasonCode::TemporaryBan,
        "restart_required" => ReasonCode::RestartRequired,
        "keepalive_timeout" => ReasonCode::KeepaliveTimeout,
        "lease_lost" => ReasonCode::LeaseLost,
        "connect_failed"
        | "connection_lost"
        | "connection_closed"
        | "noise_error"
        | "handshake_timeout"
        | "stream_error"
        | "stream_end"
        | "service_unavailable"
        | "server_failure"
        | "unreachable" => ReasonCode::ConnectionLost,
        "blob_rejected" => ReasonCode::BlobRejected,
        "pairing_failed" => ReasonCode::PairingFailed,
        _ => ReasonCode::InternalFailure,
    }
}

/// A reason as a metric label: the contract's name in lower case (`blob_rejected`).
pub fn label(reason: ReasonCode) -> String {
    reason.as_str_name().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_driver_reasons_keep_their_meaning() {
        assert_eq!(bus_reason("replaced"), ReasonCode::Replaced);
        assert_eq!(bus_reason("logged_out"), ReasonCode::LoggedOut);
        assert_eq!(bus_reason("qr_exhausted"), ReasonCode::QrExhausted);
        assert_eq!(bus_reason("client_outdated"), ReasonCode::ClientOutdated);
        assert_eq!(bus_reason("connection_lost"), ReasonCode::ConnectionLost);
        assert_eq!(bus_reason("restart_required"), ReasonCode::RestartRequired);
        assert_eq!(bus_reason("storage_error"), ReasonCode::InternalFailure);
        assert_eq!(bus_reason("something new"), ReasonCode::InternalFailure);
    }

    #[test]
    fn labels_are_the_contract_names_in_lower_case() {
        assert_eq!(label(ReasonCode::BlobRejected), "blob_rejected");
        assert_eq!(label(ReasonCode::WorkerDraining), "worker_draining");
    }
}
