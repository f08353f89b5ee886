//! Size limits and session expiry, on stacks configured with small limits.

mod support;

use std::time::Duration;

use chatmesh_e2e::rid;
use chatmesh_proto::*;
use support::{Backend, Stack};

const FLAGS: &[&str] = &["--max-body-bytes=200000", "--max-file-bytes=50000", "--session-ttl=2s"];

async fn stacks() -> Vec<Stack> {
    let mut out = vec![Stack::start_with(Backend::Standalone, FLAGS).await.unwrap()];
    out.extend(Stack::start_with(Backend::Real, FLAGS).await);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_files_are_refused() {
    for s in stacks().await {
        let (_, me) = s.user("limits").await;
        let req = PutSingleFileReq {
            request_id: "big-1".into(),
            session_id: Some(me.clone()),
            file_data: Some(FileUploadData { file_name: "big".into(), file_size: 0, file_content: vec![7; 300_000] }),
            ..Default::default()
        };
        let rsp: PutSingleFileRsp = s.client.call("/service/file/put_single_file", &req).await.unwrap();
        assert!(!rsp.success && rsp.errmsg.contains("larger than 200000"), "{}", rsp.errmsg);
        let req = PutSingleFileReq {
            request_id: rid(),
            session_id: Some(me.clone()),
            file_data: Some(FileUploadData { file_name: "medium".into(), file_size: 0, file_content: vec![7; 60_000] }),
            ..Default::default()
        };
        let rsp: PutSingleFileRsp = s.client.call("/service/file/put_single_file", &req).await.unwrap();
        assert!(!rsp.success && rsp.errmsg.contains("larger than 50000"), "{}", rsp.errmsg);
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_when_unused() {
    for s in stacks().await {
        let (_, session) = s.user("expiry").await;
        s.client.user_info(&session).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3200)).await;
        let err = s.client.user_info(&session).await.unwrap_err().to_string();
        assert!(err.contains("invalid or expired"), "{err}");
        s.stop().await;
    }
}
