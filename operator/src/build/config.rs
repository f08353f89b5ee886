//! Configuration of the chatmesh processes: the generated credentials, the Secret of connection
//! URLs, the ConfigMap of everything not secret, and each container's environment.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, EnvFromSource, EnvVar, EnvVarSource, Secret, SecretKeySelector,
};

use super::{ADMIN_PORT, Component, Ctx, Infra, short_hash};
use crate::crd::{SmsProvider, SpeechProvider};

/// Where uploaded files live in the file service's container (its volume's mount point).
pub const FILES_DIR: &str = "/var/lib/chatmesh/files";
/// The only writable path of a chatmesh container besides the files volume: an emptyDir.
pub const TMP_DIR: &str = "/tmp";

/// Per dependency: the key of its URL in the connections Secret, and the variable chatmesh reads.
pub const CONNECTIONS_KEYS: [(Infra, &str, &str); 4] = [
    (Infra::Mysql, "database-url", "CHATMESH_DATABASE_URL"),
    (Infra::Redis, "redis-url", "CHATMESH_REDIS_URL"),
    (Infra::Rabbitmq, "amqp-url", "CHATMESH_AMQP_URL"),
    (Infra::Elasticsearch, "search-url", "CHATMESH_SEARCH_URL"),
];

/// The user and database name in the managed MariaDB, the user of the managed RabbitMQ.
pub const DB_USER: &str = "chatmesh";
pub const DB_NAME: &str = "chatmesh";

/// Keys of the generated-credentials Secret this spec needs (one per managed server password).
/// Elasticsearch runs without authentication, reachable only inside the cluster.
pub fn credential_keys(spec: &crate::crd::ChatSystemSpec) -> Vec<&'static str> {
    let mut keys = vec![];
    if Infra::Mysql.managed(spec).is_some() {
        keys.extend(["mysql-root-password", "mysql-password"]);
    }
    if Infra::Redis.managed(spec).is_some() {
        keys.push("redis-password");
    }
    if Infra::Rabbitmq.managed(spec).is_some() {
        keys.push("rabbitmq-password");
    }
    keys
}

/// The managed server whose data was made with a credentials key.
pub fn credential_server(key: &str) -> Option<Infra> {
    Infra::ALL.into_iter().find(|infra| key.starts_with(&format!("{}-", infra.name())))
}

pub fn credentials_secret_name(ctx: &Ctx) -> String {
    ctx.child("credentials")
}
fn connections_secret_name(ctx: &Ctx) -> String {
    ctx.child("connections")
}
pub fn config_map_name(ctx: &Ctx) -> String {
    ctx.child("config")
}

/// The credentials Secret, the connections Secret and the ConfigMap.
pub(super) fn objects(ctx: &Ctx) -> (Secret, Secret, ConfigMap) {
    let creds = &ctx.observed.credentials;
    // Every password ever generated stays, even for a server switched to external: switching
    // back finds the volume's data with the password it was made with.
    let mut credentials = secret(ctx, credentials_secret_name(ctx), creds.clone());
    // The servers' data only accepts these passwords: they live as long as the data does.
    credentials.metadata = ctx.data_meta(credentials_secret_name(ctx), "config");

    let password = |key: &str| creds.get(key).cloned().unwrap_or_default();
    let mut urls = BTreeMap::new();
    for (infra, key, _) in CONNECTIONS_KEYS {
        if infra.managed(ctx.spec).is_none() {
            continue;
        }
        let host = ctx.child(infra.name());
        // Generated passwords are alphanumeric: no URL escaping needed.
        let url = match infra {
            Infra::Mysql => format!("mysql://{DB_USER}:{}@{host}:3306/{DB_NAME}", password("mysql-password")),
            Infra::Redis => format!("redis://:{}@{host}:6379", password("redis-password")),
            Infra::Rabbitmq => format!("amqp://{DB_USER}:{}@{host}:5672/%2f", password("rabbitmq-password")),
            Infra::Elasticsearch => format!("http://{host}:9200"),
        };
        urls.insert(key.to_string(), url);
    }
    let connections = secret(ctx, connections_secret_name(ctx), urls);

    let config_map = ConfigMap {
        metadata: ctx.meta(config_map_name(ctx), "config"),
        data: Some(config_data(ctx)),
        ..ConfigMap::default()
    };
    (credentials, connections, config_map)
}

fn secret(ctx: &Ctx, name: String, values: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: ctx.meta(name, "config"),
        type_: Some("Opaque".into()),
        // `data`, not `stringData`: the stored object then equals what is applied, and a
        // repeated apply is a no-op.
        data: Some(values.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
        ..Secret::default()
    }
}

/// Non-secret settings every chatmesh process reads (flags by environment variable).
fn config_data(ctx: &Ctx) -> BTreeMap<String, String> {
    let spec = ctx.spec;
    let mut data = BTreeMap::from([
        ("CHATMESH_LOG_FORMAT".to_string(), "json".to_string()),
        // The migration Job migrates; services must not race each other doing it.
        ("CHATMESH_AUTO_MIGRATE".into(), "false".into()),
        ("CHATMESH_DATA_DIR".into(), format!("{TMP_DIR}/chatmesh")),
        ("CHATMESH_FILES_DIR".into(), FILES_DIR.into()),
        ("CHATMESH_ADMIN_LISTEN".into(), format!("0.0.0.0:{ADMIN_PORT}")),
        ("CHATMESH_SMS_PROVIDER".into(), spec.sms.provider.as_str().into()),
        ("CHATMESH_SPEECH_PROVIDER".into(), spec.speech.provider.as_str().into()),
    ]);
    if let Some(endpoint) = &spec.observability.otlp_endpoint {
        data.insert("CHATMESH_OTLP_ENDPOINT".into(), endpoint.clone());
    }
    if let Some(ratio) = spec.observability.trace_sample_ratio {
        data.insert("CHATMESH_TRACE_SAMPLE_RATIO".into(), ratio.to_string());
    }
    for component in Component::ALL {
        if let Some(port) = component.grpc_port() {
            // Headless Services: the client resolves every pod's address and balances.
            let var = format!("CHATMESH_{}_ADDR", component.name().to_uppercase());
            data.insert(var, format!("http://{}:{port}", ctx.child(component.name())));
            // The binary keeps internal ports on loopback unless told otherwise; pods are
            // reached from other pods (mutual TLS and NetworkPolicies guard them).
            let listen = format!("CHATMESH_{}_LISTEN", component.name().to_uppercase());
            data.insert(listen, format!("0.0.0.0:{port}"));
        }
    }
    if spec.sms.provider == SmsProvider::Aliyun {
        let sms = &spec.sms;
        data.insert("CHATMESH_ALIYUN_SIGN_NAME".into(), sms.sign_name.clone().unwrap_or_default());
        data.insert("CHATMESH_ALIYUN_TEMPLATE_CODE".into(), sms.template_code.clone().unwrap_or_default());
        if let Some(endpoint) = &sms.endpoint {
            data.insert("CHATMESH_ALIYUN_ENDPOINT".into(), endpoint.clone());
        }
    }
    match (spec.speech.provider, &spec.speech.endpoint) {
        (SpeechProvider::Openai, Some(endpoint)) => {
            data.insert("CHATMESH_OPENAI_BASE_URL".into(), endpoint.clone());
        }
        (SpeechProvider::Baidu, Some(endpoint)) => {
            data.insert("CHATMESH_BAIDU_ASR_URL".into(), endpoint.clone());
        }
        _ => {}
    }
    data
}

/// Hash of everything a pod reads at start besides its own spec: when it changes, the pod
/// template's annotation changes and the pods roll.
pub(super) fn hash(
    connections: &Secret,
    config_map: &ConfigMap,
    external_digests: &BTreeMap<(String, String), String>,
) -> String {
    let input = serde_json::json!({
        "connections": connections.data,
        "config": config_map.data,
        "external": external_digests.iter().map(|((s, k), d)| format!("{s}/{k}={d}")).collect::<Vec<_>>(),
    });
    short_hash(input.to_string().as_bytes(), 16)
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: None }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The ConfigMap as the environment of a chatmesh container.
pub(super) fn env_from(ctx: &Ctx) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource { name: config_map_name(ctx), optional: None }),
        ..EnvFromSource::default()
    }]
}

/// The environment of a chatmesh container running `target`: the target, the connection URLs
/// (each from the operator's Secret or the user's), the credentials this component needs, then
/// the spec's extra variables (which replace ours of the same name).
pub(super) fn env(ctx: &Ctx, target: &str, component: Option<Component>) -> Vec<EnvVar> {
    let spec = ctx.spec;
    let mut env = vec![EnvVar { name: "CHATMESH_TARGET".into(), value: Some(target.into()), ..EnvVar::default() }];
    for (infra, key, var) in CONNECTIONS_KEYS {
        env.push(match infra.external(spec) {
            Some(external) => secret_env(var, &external.url_secret.name, &external.url_secret.key),
            None => secret_env(var, &connections_secret_name(ctx), key),
        });
    }
    if component == Some(Component::User)
        && spec.sms.provider == SmsProvider::Aliyun
        && let Some(secret) = &spec.sms.credentials_secret
    {
        env.push(secret_env("CHATMESH_ALIYUN_ACCESS_KEY_ID", secret, "accessKeyId"));
        env.push(secret_env("CHATMESH_ALIYUN_ACCESS_KEY_SECRET", secret, "accessKeySecret"));
    }
    if component == Some(Component::Speech)
        && let Some(secret) = &spec.speech.credentials_secret
    {
        match spec.speech.provider {
            SpeechProvider::Baidu => {
                env.push(secret_env("CHATMESH_BAIDU_API_KEY", secret, "apiKey"));
                env.push(secret_env("CHATMESH_BAIDU_SECRET_KEY", secret, "secretKey"));
            }
            SpeechProvider::Openai => env.push(secret_env("CHATMESH_OPENAI_API_KEY", secret, "apiKey")),
            SpeechProvider::Offline => {}
        }
    }
    if component.is_some() {
        // The services only: the migration Job makes no gRPC call.
        env.extend(super::tls::env(ctx));
    }
    if let Some(component) = component {
        let delay = super::workloads::shutdown_delay(ctx, component);
        env.push(EnvVar { name: "CHATMESH_SHUTDOWN_DELAY".into(), value: Some(delay), ..EnvVar::default() });
        // Duplicate names would make server-side apply refuse the list (it is keyed by name).
        for extra in &component.spec(spec).env {
            env.retain(|e| e.name != extra.name);
            env.push(extra.clone());
        }
    }
    env
}

/// A key of a user's Secret that the spec references, and the spec field that does.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExternalRef {
    pub secret: String,
    pub key: String,
    pub field: String,
}

/// Every Secret key the spec references outside the operator's own Secrets; the read step
/// checks each exists before anything is applied, so a typo is reported, not a crash-looping pod.
pub fn external_refs(spec: &crate::crd::ChatSystemSpec) -> Vec<ExternalRef> {
    let mut refs = vec![];
    let mut add = |secret: &str, key: &str, field: String| {
        refs.push(ExternalRef { secret: secret.into(), key: key.into(), field })
    };
    for infra in Infra::ALL {
        if let Some(external) = infra.external(spec) {
            let field = format!("spec.{}.external.urlSecret", infra.name());
            add(&external.url_secret.name, &external.url_secret.key, field);
        }
    }
    if spec.sms.provider == SmsProvider::Aliyun
        && let Some(secret) = &spec.sms.credentials_secret
    {
        add(secret, "accessKeyId", "spec.sms.credentialsSecret".into());
        add(secret, "accessKeySecret", "spec.sms.credentialsSecret".into());
    }
    if let Some(secret) = &spec.speech.credentials_secret {
        let field = || "spec.speech.credentialsSecret".to_string();
        match spec.speech.provider {
            SpeechProvider::Baidu => {
                add(secret, "apiKey", field());
                add(secret, "secretKey", field());
            }
            SpeechProvider::Openai => add(secret, "apiKey", field()),
            SpeechProvider::Offline => {}
        }
    }
    refs
}
