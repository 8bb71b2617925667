//! `connect()` reads `KUBECONFIG` as kubectl does. The environment is process-wide, so this
//! binary holds this one test only.

use canary_controller::{ConfigMapRef, Error, SourceEvent, connect, watch};
use canary_testkit::fake_apiserver::FakeApiServer;
use futures_util::StreamExt;

#[test]
fn connect_follows_kubeconfig_and_explains_its_absence() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let empty_home = tempfile::tempdir().unwrap();
    // SAFETY: the only test of this binary, and no other thread exists yet (the runtime is
    // current-thread), so nothing reads the environment concurrently.
    unsafe {
        std::env::remove_var("KUBERNETES_SERVICE_HOST");
        std::env::remove_var("KUBERNETES_SERVICE_PORT");
        std::env::set_var("HOME", empty_home.path());
        std::env::set_var("KUBECONFIG", empty_home.path().join("missing"));
    }
    let Err(error) = runtime.block_on(connect()) else {
        panic!("connect() must fail without a kubeconfig or a service account");
    };
    assert!(matches!(error, Error::Config(_)), "{error}");
    assert!(
        error
            .to_string()
            .contains("no Kubernetes client configuration"),
        "{error}"
    );

    runtime.block_on(async {
        let api = FakeApiServer::start().await;
        api.create_configmap("default", "canary", &[("canary-weight", "5")]);
        // SAFETY: as above; the fake server's tasks run on this same thread.
        unsafe { std::env::set_var("KUBECONFIG", api.kubeconfig_path()) };
        let client = connect().await.expect("client from KUBECONFIG");
        let cm: ConfigMapRef = "default/canary".parse().unwrap();
        let first = std::pin::pin!(watch(client, cm)).next().await;
        assert!(
            matches!(first, Some(SourceEvent::Applied { .. })),
            "{first:?}"
        );
    });
}
