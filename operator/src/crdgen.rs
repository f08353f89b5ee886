//! Prints the ChatSystem CRD; `crds/chatmesh.io_chatsystems.yaml` is this program's output.
fn main() {
    print!("{}", chatmesh_operator::crd::crd_yaml());
}
