//! Round trips of every kind: full YAML manifests through the types and JSON and back, and minimal manifests that serialize to exactly themselves.
#![allow(clippy::unwrap_used)]

use api_types::{
    Event, Job, Lease, Namespace, Node, Resource, ResourceDefinition, Service, Task, Validate,
    decode, from_json_value, from_yaml_str,
};
use serde::Serialize;
use serde_json::Value;

/// YAML → struct (strict) → JSON → struct: equal; and the JSON equals the YAML's own value.
fn full_round_trip<K: Resource + PartialEq + Validate>(yaml: &str) -> K {
    let first: K = from_yaml_str(yaml).unwrap_or_else(|e| panic!("{e}"));
    let json = serde_json::to_value(&first).unwrap();
    let second: K = from_json_value(json.clone()).unwrap();
    assert_eq!(first, second);
    let text = serde_json::to_string(&first).unwrap();
    let third: K = decode::from_json_str(&text).unwrap();
    assert_eq!(first, third);
    // Nothing is lost or added: the manifest is already in canonical form.
    let original = decode::yaml_str_to_value(yaml).unwrap();
    assert_eq!(
        json,
        original,
        "{}",
        serde_json::to_string_pretty(&json).unwrap()
    );
    let errors = first.validate();
    assert!(errors.is_empty(), "{errors:#?}");
    first
}

/// A minimal manifest serializes back to exactly its own fields.
fn minimal_round_trip<K: Resource + Serialize>(yaml: &str) {
    let object: K = from_yaml_str(yaml).unwrap_or_else(|e| panic!("{e}"));
    let json = serde_json::to_value(&object).unwrap();
    let original: Value = decode::yaml_str_to_value(yaml).unwrap();
    assert_eq!(json, original);
}

#[test]
fn task() {
    let task: Task = full_round_trip(
        r#"
apiVersion: loom.dev/v1
kind: Task
metadata:
  name: train-0
  namespace: ml
  uid: 5b0c1c1e-0000-4000-8000-000000000001
  resourceVersion: "1042"
  generation: 2
  creationTimestamp: "2024-05-01T10:00:00Z"
  labels:
    loom.dev/job: train
    app: trainer
  annotations:
    note: first task
  ownerReferences:
    - apiVersion: loom.dev/v1
      kind: Job
      name: train
      uid: 5b0c1c1e-0000-4000-8000-000000000000
      controller: true
      blockOwnerDeletion: true
  finalizers: [loom.dev/logs]
spec:
  driver: container
  image: registry.example.com/trainer:1.2
  command: [python, train.py]
  args: ["--epochs", "10"]
  env:
    - name: LOOM_TASK_INDEX
      value: "0"
    - name: EMPTY
  workingDir: /work
  resources:
    cpu: 500m
    memory: 1536Mi
    disk: 10Gi
    ports: [8080, 9090]
    extended:
      loom.dev/gpu: "1"
  constraints:
    - key: loom.dev/arch
      operator: In
      values: [amd64, arm64]
    - key: loom.dev/kernel-major
      operator: Gt
      values: ["4"]
    - key: maintenance
      operator: DoesNotExist
  tolerations:
    - key: dedicated
      operator: Equal
      value: ml
      effect: NoSchedule
    - operator: Exists
      effect: NoExecute
      tolerationSeconds: 300
  priority: 100
  restartPolicy: OnFailure
  timeLimitSeconds: 3600
  terminationGracePeriodSeconds: 10
  mounts:
    - source: /data/in
      target: /input
    - source: /data/out/0
      target: /output
      readOnly: false
  logPath: train-0.log
  nodeName: node-1
  index: 0
status:
  phase: Running
  reason: Started
  message: running since 10:00
  exitCode: 0
  nodeName: node-1
  startTime: "2024-05-01T10:00:05Z"
  finishTime: "2024-05-01T11:00:05Z"
  restartCount: 1
  conditions:
    - type: Scheduled
      status: "True"
      lastTransitionTime: "2024-05-01T10:00:01Z"
    - type: Ready
      status: "True"
      reason: Started
      lastTransitionTime: "2024-05-01T10:00:05Z"
      observedGeneration: 2
  logPath: /var/lib/loom/logs/train-0.log
  usage:
    cpu: 250m
    memory: 512Mi
"#,
    );
    assert_eq!(task.spec.resources.memory.unwrap().value(), 1536 << 20);
    assert!(task.spec.mounts[0].is_read_only());
    assert!(!task.spec.mounts[1].is_read_only());
    minimal_round_trip::<Task>(
        "apiVersion: loom.dev/v1\nkind: Task\nmetadata:\n  name: t\nspec:\n  image: busybox\n",
    );
}

#[test]
fn job() {
    let job: Job = full_round_trip(
        r#"
apiVersion: loom.dev/v1
kind: Job
metadata:
  name: train
  namespace: ml
spec:
  owner: alice
  replicas: 6
  parallelism: 2
  priority: 50
  template:
    metadata:
      labels: {app: trainer}
      annotations: {team: ml}
    spec:
      image: trainer:1.2
      command: [python, train.py, "--shard={{index}}/{{replicas}}"]
      resources: {cpu: "2", memory: 4Gi}
  overrides:
    - indexes: "0,3-5"
      spec:
        args: ["--leader"]
        resources: {cpu: "4"}
  inputs:
    - source: /datasets/imagenet
      target: /data
  outputDir: /results/train
  logDir: /logs/train
  env:
    - name: MODE
      value: fast
  timeLimitSeconds: 7200
  maxRetries: 3
  dependsOn: [prep, fetch]
  killed: true
status:
  phase: Failed
  startTime: "2024-05-01T10:00:00Z"
  endTime: "2024-05-01T12:00:00Z"
  exitCode: 2
  reason: TaskFailed
  message: task 3 exited with code 2
  pending: 1
  running: 2
  completed: 3
  failed: 4
  killed: 5
  lost: 6
  conditions:
    - type: Complete
      status: "False"
  observedGeneration: 1
"#,
    );
    assert_eq!(job.spec.task_spec_for(4).args, vec!["--leader"]);
    assert_eq!(job.spec.task_spec_for(1).args, Vec::<String>::new());
    minimal_round_trip::<Job>(
        "apiVersion: loom.dev/v1\nkind: Job\nmetadata:\n  name: j\nspec:\n  template:\n    spec:\n      image: busybox\n",
    );
}

#[test]
fn service() {
    full_round_trip::<Service>(
        r#"
apiVersion: loom.dev/v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  replicas: 3
  template:
    metadata:
      labels: {app: web}
    spec:
      image: nginx:1.27
      restartPolicy: Always
      resources: {cpu: 100m, memory: 64Mi, ports: [80]}
  strategy:
    maxSurge: 1
    maxUnavailable: 25%
status:
  replicas: 3
  updatedReplicas: 2
  readyReplicas: 3
  availableReplicas: 3
  observedGeneration: 4
  conditions:
    - type: Available
      status: "True"
"#,
    );
    minimal_round_trip::<Service>(
        "apiVersion: loom.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      image: nginx\n",
    );
}

#[test]
fn node() {
    let node: Node = full_round_trip(
        r#"
apiVersion: loom.dev/v1
kind: Node
metadata:
  name: node-1
  labels:
    loom.dev/arch: amd64
    loom.dev/os: linux
spec:
  unschedulable: true
  taints:
    - key: dedicated
      value: ml
      effect: NoSchedule
    - key: maintenance
      effect: NoExecute
status:
  capacity: {cpu: "8", memory: 32Gi, disk: 500Gi, loom.dev/gpu: "2"}
  allocatable: {cpu: 7500m, memory: 30Gi}
  conditions:
    - type: Ready
      status: "True"
      reason: NodeletReady
      lastHeartbeatTime: "2024-05-01T10:00:10Z"
      lastTransitionTime: "2024-05-01T09:00:00Z"
  addresses:
    - type: InternalIP
      address: 10.0.0.5
    - type: Hostname
      address: node-1
  info:
    os: linux
    arch: amd64
    kernelVersion: 6.8.0
    hostname: node-1
    nodeletVersion: 0.1.0
    osImage: Debian GNU/Linux 12
    machineId: abc
    bootId: def
  nodeletEndpoint: http://10.0.0.5:7444
  usage: {cpu: 1200m, memory: 3Gi}
"#,
    );
    assert!(node.is_ready());
    minimal_round_trip::<Node>("apiVersion: loom.dev/v1\nkind: Node\nmetadata:\n  name: n\n");
}

#[test]
fn namespace() {
    full_round_trip::<Namespace>(
        r#"
apiVersion: loom.dev/v1
kind: Namespace
metadata:
  name: team-a
  labels: {team: a}
spec:
  finalizers: [loom.dev/namespace]
status:
  phase: Terminating
  conditions:
    - type: NamespaceContentRemaining
      status: "True"
      message: 3 tasks remain
"#,
    );
    minimal_round_trip::<Namespace>(
        "apiVersion: loom.dev/v1\nkind: Namespace\nmetadata:\n  name: team-a\n",
    );
}

#[test]
fn event() {
    full_round_trip::<Event>(
        r#"
apiVersion: loom.dev/v1
kind: Event
metadata:
  name: train-0.17c2
  namespace: ml
involvedObject:
  apiVersion: loom.dev/v1
  kind: Task
  namespace: ml
  name: train-0
  uid: 5b0c1c1e-0000-4000-8000-000000000001
  resourceVersion: "1042"
  fieldPath: spec.image
reason: Scheduled
message: bound to node-1
type: Normal
count: 2
firstTimestamp: "2024-05-01T10:00:01Z"
lastTimestamp: "2024-05-01T10:00:02Z"
source:
  component: scheduler
  host: cp-1
reportingComponent: loom.dev/scheduler
reportingInstance: cp-1
action: Binding
"#,
    );
    minimal_round_trip::<Event>(
        "apiVersion: loom.dev/v1\nkind: Event\nmetadata:\n  name: e\n  namespace: ml\ninvolvedObject:\n  kind: Task\n  name: t\n",
    );
}

#[test]
fn lease() {
    let lease: Lease = full_round_trip(
        r#"
apiVersion: loom.dev/v1
kind: Lease
metadata:
  name: controller-manager
  namespace: loom-system
spec:
  holderIdentity: cp-1
  leaseDurationSeconds: 15
  acquireTime: "2024-05-01T10:00:00Z"
  renewTime: "2024-05-01T10:00:10Z"
  leaseTransitions: 3
"#,
    );
    let renew = lease.spec.renew_time.unwrap();
    assert!(lease.spec.is_held_at(renew + chrono::Duration::seconds(14)));
    assert!(!lease.spec.is_held_at(renew + chrono::Duration::seconds(15)));
    minimal_round_trip::<Lease>(
        "apiVersion: loom.dev/v1\nkind: Lease\nmetadata:\n  name: l\n  namespace: loom-system\n",
    );
}

#[test]
fn resource_definition() {
    let rd: ResourceDefinition = full_round_trip(
        r#"
apiVersion: loom.dev/v1
kind: ResourceDefinition
metadata:
  name: pipelines.example.com
spec:
  group: example.com
  names:
    kind: Pipeline
    plural: pipelines
    singular: pipeline
    shortNames: [pl]
    listKind: PipelineList
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                stages: {type: array, items: {type: string}}
      subresources:
        status: {}
    - name: v1beta1
      served: false
      storage: false
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
status:
  conditions:
    - type: Established
      status: "True"
  acceptedNames:
    kind: Pipeline
    plural: pipelines
  storedVersions: [v1]
"#,
    );
    let info = rd.info_for_version("v1").unwrap();
    assert_eq!(info.api_version(), "example.com/v1");
    assert!(info.namespaced && info.has_status);
    assert_eq!(info.list_kind, "PipelineList");
    assert!(!rd.info_for_version("v1beta1").unwrap().has_status);
    assert_eq!(rd.storage_version().unwrap().name, "v1");
    minimal_round_trip::<ResourceDefinition>(
        r#"
apiVersion: loom.dev/v1
kind: ResourceDefinition
metadata:
  name: pipelines.example.com
spec:
  group: example.com
  names: {kind: Pipeline, plural: pipelines}
  scope: Cluster
  versions:
    - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object}}}
"#,
    );
}

#[test]
fn resource_facts() {
    let facts: Vec<(String, String, Vec<String>, bool, bool)> = api_types::builtin_kinds()
        .into_iter()
        .map(|i| (i.kind, i.plural, i.short_names, i.namespaced, i.has_status))
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        facts,
        vec![
            ("Task".into(), "tasks".into(), s(&["t"]), true, true),
            ("Job".into(), "jobs".into(), s(&["job"]), true, true),
            ("Service".into(), "services".into(), s(&["svc"]), true, true),
            (
                "Endpoints".into(),
                "endpoints".into(),
                s(&["ep"]),
                true,
                false
            ),
            ("Node".into(), "nodes".into(), s(&["no"]), false, true),
            (
                "Namespace".into(),
                "namespaces".into(),
                s(&["ns"]),
                false,
                true
            ),
            ("Event".into(), "events".into(), s(&["ev"]), true, false),
            ("Lease".into(), "leases".into(), s(&[]), true, false),
            (
                "ResourceDefinition".into(),
                "resourcedefinitions".into(),
                s(&["rd"]),
                false,
                true
            ),
        ]
    );
    assert_eq!(Task::api_version(), "loom.dev/v1");
    assert_eq!(Task::info().group_resource().to_string(), "tasks.loom.dev");
    assert_eq!(Job::info().group_kind().to_string(), "Job.loom.dev");
    assert!(Service::info().is_named("svc"));
    assert!(Service::info().is_named("Service"));
    let list = api_types::List::new(vec![Task::default()], api_types::ListMeta::default());
    let json = serde_json::to_value(&list).unwrap();
    assert_eq!(json["kind"], "TaskList");
    assert_eq!(json["apiVersion"], "loom.dev/v1");
    let back: api_types::List<Task> = serde_json::from_value(json).unwrap();
    assert_eq!(back, list);
}

#[test]
fn defaults_have_the_right_type_meta() {
    fn check<K: Resource + Serialize + Default>() {
        let json = serde_json::to_value(K::default()).unwrap();
        assert_eq!(json["apiVersion"], "loom.dev/v1");
        assert_eq!(json["kind"], K::KIND);
        let decoded: K = from_json_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        assert_eq!(serde_json::to_value(&decoded).unwrap()["kind"], K::KIND);
    }
    check::<Task>();
    check::<Job>();
    check::<Service>();
    check::<Node>();
    check::<Namespace>();
    check::<Event>();
    check::<Lease>();
    check::<ResourceDefinition>();
}
