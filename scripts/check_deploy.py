#!/usr/bin/env python3
"""The project's own check of the deployment rules that cfn-lint and `sam validate` miss.

Lambda@Edge accepts far less than Lambda, and most of it is only refused when CloudFront
replicates the function, minutes into a deploy (or never, for the SQS sizing rules, which
just lose jobs). This reads the SAM/CloudFormation template with cfn-lint's own loader (so
`!Ref`, `!Sub`... decode as CloudFormation does) and checks:

* every function a CloudFront distribution associates: runtime Node.js or Python, x86_64,
  no environment variables, none of the Lambda features Lambda@Edge refuses, timeout <= 30 s
  for origin events (5 s for viewer events), a role trusted by lambda.amazonaws.com and
  edgelambda.amazonaws.com, and association by a numbered version (not $LATEST, not an
  unversioned function ARN, not an alias);
* every SQS-triggered function: timeout x 6 <= the queue's visibility timeout, the queue
  has a dead-letter queue with maxReceiveCount 3..5, and partial batch failures are reported;
* the IAM policies of those functions grant only what edgethumb needs;
* the edge bundle (when present): zipped <= 50 MiB, unzipped <= 250 MB, the handler module
  at its root, and its baked-in edgethumb.json within the response budget;
* an edge config file (when given), and the one baked into the bundle: checked by the
  `edgethumb edge-config check` CLI, i.e. by the edge's own parser (keys and bounds of
  `EdgeConfig`, src/edge/config.rs), so nothing here restates them.
* the viewer-request CloudFront Function on the variants behaviour, its KeyValueStore and
  its inline code (scripts/viewer_function.py).

Values given by parameters are checked for every value the parameter admits (AllowedValues,
else Default/MinValue/MaxValue), jointly when two values depend on the same parameter.

Exit status 0 when all rules hold, 1 with one line per violation, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edge_config  # noqa: E402  (scripts/edge_config.py: finds or builds the edgethumb CLI)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATE = ROOT / "deploy" / "template.yaml"
DEFAULT_EDGE_ZIP = ROOT / "target" / "lambda" / "edge.zip"

# Lambda@Edge quotas (CloudFront developer guide, "Quotas on Lambda@Edge").
EDGE_RUNTIME_PREFIXES = ("nodejs", "python")
ORIGIN_EVENT_MAX_TIMEOUT_S = 30
VIEWER_EVENT_MAX_TIMEOUT_S = 5
ORIGIN_EVENT_MAX_MEMORY_MB = 10240
VIEWER_EVENT_MAX_MEMORY_MB = 128
ORIGIN_EVENT_MAX_ZIP_BYTES = 50 * 1024 * 1024
VIEWER_EVENT_MAX_ZIP_BYTES = 1024 * 1024
MAX_UNZIPPED_BYTES = 250 * 1000 * 1000
EDGE_MAX_EPHEMERAL_STORAGE_MB = 512
EDGE_CONFIG_NAME = "edgethumb.json"
EDGE_TRUSTED_SERVICES = {"lambda.amazonaws.com", "edgelambda.amazonaws.com"}

# Lambda features Lambda@Edge refuses (CloudFront developer guide, "Restrictions on Lambda@Edge").
EDGE_UNSUPPORTED_PROPERTIES = {
    "Layers": "layers",
    "VpcConfig": "VPC access",
    "DeadLetterQueue": "a dead-letter queue",
    "DeadLetterConfig": "a dead-letter queue",
    "Tracing": "X-Ray tracing",
    "TracingConfig": "X-Ray tracing",
    "ReservedConcurrentExecutions": "reserved concurrency",
    "ProvisionedConcurrencyConfig": "provisioned concurrency",
    "ImageUri": "container images",
    "ImageConfig": "container images",
    "FileSystemConfigs": "EFS file systems",
    "KmsKeyArn": "a customer managed key",
}

# AWS's advice for SQS event sources: visibility timeout >= 6 x the function timeout.
VISIBILITY_FACTOR = 6
MIN_MAX_RECEIVE_COUNT, MAX_MAX_RECEIVE_COUNT = 3, 5

# Least privilege: what each kind of function may do, beyond writing its own logs.
EDGE_ACTIONS = {"s3:GetObject", "sqs:SendMessage"}
WORKER_ACTIONS = {
    "s3:GetObject",
    "s3:PutObject",
    "s3:PutObjectTagging",
    "s3:GetObjectTagging",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    # A replaced or deleted original (S3 event notifications): its variants listed,
    # re-rendered or deleted, the distribution invalidated.
    "s3:ListBucket",
    "s3:DeleteObject",
    "cloudfront:CreateInvalidation",
    # A throttled invalidation, deferred to the render queue with a delay.
    "sqs:SendMessage",
}
LOG_ACTIONS = {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"}
ALLOWED_MANAGED_POLICIES = {"AWSLambdaBasicExecutionRole"}

FUNCTION_TYPES = {"AWS::Serverless::Function", "AWS::Lambda::Function"}
LAMBDA_DEFAULT_TIMEOUT_S = 3
SQS_DEFAULT_VISIBILITY_S = 30


class Unresolvable(Exception):
    """A value that is neither a literal nor built from parameters and mappings."""


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        line = f"{where}: {message}"
        if line not in self.violations:
            self.violations.append(line)


# --------------------------------------------------------------------------- template values


class Template:
    def __init__(self, data: dict, name: str):
        self.data = data
        self.name = name
        self.resources: dict = data.get("Resources") or {}
        self.parameters: dict = data.get("Parameters") or {}
        self.mappings: dict = data.get("Mappings") or {}
        self.globals_function: dict = ((data.get("Globals") or {}).get("Function")) or {}

    def function_properties(self, logical_id: str) -> dict:
        """Properties as deployed: SAM's Globals.Function apply to every serverless function."""
        resource = self.resources[logical_id]
        props = dict(resource.get("Properties") or {})
        if resource.get("Type") == "AWS::Serverless::Function":
            for key, value in self.globals_function.items():
                if key == "Environment" and "Environment" in props:
                    continue  # merged by SAM: either one is a violation at the edge anyway
                props.setdefault(key, value)
        return props

    def parameter_values(self, name: str) -> list[Any]:
        spec = self.parameters.get(name)
        if spec is None:
            raise Unresolvable(f"parameter {name} is not declared")
        if spec.get("AllowedValues"):
            return list(spec["AllowedValues"])
        values = [spec[k] for k in ("Default", "MinValue", "MaxValue") if k in spec]
        if not values:
            raise Unresolvable(f"parameter {name} has no default, bounds or allowed values")
        return values

    def parameters_in(self, value: Any) -> set[str]:
        """Names of template parameters a value refers to."""
        found: set[str] = set()
        if isinstance(value, dict):
            ref = value.get("Ref")
            if isinstance(ref, str) and ref in self.parameters and len(value) == 1:
                found.add(ref)
            for item in value.values():
                found |= self.parameters_in(item)
        elif isinstance(value, list):
            for item in value:
                found |= self.parameters_in(item)
        return found

    def scenarios(self, *values: Any) -> Iterator[dict[str, Any]]:
        """Every combination of the parameters the values depend on."""
        names = sorted(set().union(*(self.parameters_in(v) for v in values)))
        choices = [self.parameter_values(n) for n in names]
        for combo in itertools.product(*choices):
            yield dict(zip(names, combo))

    def evaluate(self, value: Any, env: dict[str, Any]) -> Any:
        """Resolve a value under one assignment of parameters."""
        if isinstance(value, dict) and len(value) == 1 and (set(value) == {"Ref"} or next(iter(value)).startswith("Fn::")):
            (fn, arg), = value.items()
            if fn == "Ref":
                if arg == "AWS::NoValue":
                    return NO_VALUE
                if arg in env:
                    return env[arg]
                raise Unresolvable(f"Ref {arg}")
            if fn == "Fn::FindInMap":
                map_name, top, second = (self.evaluate(a, env) for a in arg[:3])
                try:
                    return self.mappings[str(map_name)][str(top)][str(second)]
                except KeyError as missing:
                    raise Unresolvable(f"Fn::FindInMap {map_name}/{top}/{second}: no {missing}") from None
            if fn == "Fn::If":
                # Which branch depends on a condition; callers check both.
                raise Unresolvable("Fn::If")
            raise Unresolvable(fn)
        if isinstance(value, list):
            return [self.evaluate(v, env) for v in value]
        if isinstance(value, dict):
            return {k: self.evaluate(v, env) for k, v in value.items()}
        return value

    def branches(self, value: Any) -> list[Any]:
        """The alternatives of an Fn::If (recursively), else the value itself."""
        if isinstance(value, dict) and list(value) == ["Fn::If"]:
            _, yes, no = value["Fn::If"]
            return self.branches(yes) + self.branches(no)
        return [value]


def as_number(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise Unresolvable(f"{what} {value!r} is not a number") from None


def describe(env: dict[str, Any]) -> str:
    if not env:
        return ""
    return " (with " + ", ".join(f"{k}={v}" for k, v in sorted(env.items())) + ")"


def target_of(value: Any) -> str | None:
    """The logical id a Ref or Fn::GetAtt ...Arn points at."""
    if isinstance(value, dict):
        if isinstance(value.get("Ref"), str):
            return value["Ref"]
        getatt = value.get("Fn::GetAtt")
        if isinstance(getatt, list) and getatt:
            return str(getatt[0])
        if isinstance(getatt, str):
            return getatt.split(".")[0]
    return None


# --------------------------------------------------------------------------- Lambda@Edge


@dataclass
class Association:
    distribution: str
    behaviour: str
    event_type: str
    arn: Any


def associations(tpl: Template) -> Iterator[Association]:
    for logical_id, resource in tpl.resources.items():
        if resource.get("Type") != "AWS::CloudFront::Distribution":
            continue
        config = (resource.get("Properties") or {}).get("DistributionConfig") or {}
        behaviours = [("DefaultCacheBehavior", config.get("DefaultCacheBehavior") or {})]
        for behaviour in config.get("CacheBehaviors") or []:
            behaviours.append((f"CacheBehaviors[{behaviour.get('PathPattern')}]", behaviour))
        for name, behaviour in behaviours:
            for assoc in behaviour.get("LambdaFunctionAssociations") or []:
                yield Association(logical_id, name, str(assoc.get("EventType")), assoc.get("LambdaFunctionARN"))


def edge_function_of(tpl: Template, assoc: Association, report: Report) -> str | None:
    """The function an association runs, after checking it names a numbered version."""
    where = f"{assoc.distribution} {assoc.behaviour} {assoc.event_type}"
    arn = assoc.arn
    if isinstance(arn, dict) and list(arn) == ["Fn::Sub"]:
        sub = arn["Fn::Sub"]
        text = sub if isinstance(sub, str) else str(sub[0])
        whole = re.fullmatch(r"\$\{([\w.:]+)\}", text)
        if whole:
            arn = {"Ref": whole.group(1)}
        else:
            arn = text
    if isinstance(arn, str):
        if arn.endswith(":$LATEST"):
            report.add(where, "associates $LATEST; Lambda@Edge needs a numbered version")
        elif re.search(r":function:[^:]+:\d+$", arn):
            return None  # a numbered version of a function outside this template
        elif re.search(r":function:[^:]+$", arn):
            report.add(where, "associates an unversioned function ARN; Lambda@Edge needs a numbered version")
        elif re.search(r":function:[^:]+:[^:]+$", arn):
            report.add(where, "associates an alias; Lambda@Edge needs a numbered version")
        else:
            report.add(where, f"cannot tell that {arn!r} is a numbered function version")
        return None
    if isinstance(arn, dict) and isinstance(arn.get("Ref"), str):
        ref = arn["Ref"]
        if ref.endswith(".Version"):
            fn = ref[: -len(".Version")]
            resource = tpl.resources.get(fn) or {}
            if resource.get("Type") != "AWS::Serverless::Function":
                report.add(where, f"{ref} is not a SAM function's published version")
                return None
            if not (resource.get("Properties") or {}).get("AutoPublishAlias"):
                report.add(where, f"{fn} has no AutoPublishAlias, so {ref} publishes no numbered version")
            return fn
        if ref.endswith(".Alias"):
            report.add(where, f"associates alias {ref}; Lambda@Edge needs a numbered version")
            return ref[: -len(".Alias")]
        resource = tpl.resources.get(ref) or {}
        kind = resource.get("Type")
        if kind == "AWS::Lambda::Version":
            return target_of((resource.get("Properties") or {}).get("FunctionName"))
        if kind == "AWS::Lambda::Alias":
            report.add(where, f"associates alias {ref}; Lambda@Edge needs a numbered version")
            return target_of((resource.get("Properties") or {}).get("FunctionName"))
        if kind in FUNCTION_TYPES:
            report.add(where, f"associates the unversioned function {ref}; Lambda@Edge needs a numbered version")
            return ref
        if ref in tpl.parameters:
            report.add(where, f"association comes from parameter {ref}; cannot verify it is a numbered version")
            return None
    getatt = target_of(arn) if isinstance(arn, dict) and "Fn::GetAtt" in arn else None
    if getatt:
        kind = (tpl.resources.get(getatt) or {}).get("Type")
        if kind in FUNCTION_TYPES:
            report.add(where, f"associates the unversioned function ARN of {getatt}; Lambda@Edge needs a numbered version")
            return getatt
    report.add(where, f"cannot verify that {json.dumps(arn, default=str)} is a numbered function version")
    return None


def check_value(tpl: Template, report: Report, where: str, value: Any, check) -> None:
    """Run check(resolved, env) for every parameter assignment and Fn::If branch."""
    for branch in tpl.branches(value):
        try:
            for env in tpl.scenarios(branch):
                check(tpl.evaluate(branch, env), env)
        except Unresolvable as why:
            report.add(where, f"cannot verify ({why})")


def check_edge_function(tpl: Template, fn: str, event_types: set[str], report: Report) -> None:
    if fn not in tpl.resources or tpl.resources[fn].get("Type") not in FUNCTION_TYPES:
        report.add(fn, "associated with CloudFront but not a function in this template")
        return
    props = tpl.function_properties(fn)
    viewer = any(e.startswith("viewer") for e in event_types)
    report.checked.append(f"edge function {fn}")

    def runtime(value, env):
        if value is NO_VALUE or not str(value).startswith(EDGE_RUNTIME_PREFIXES):
            report.add(fn, f"runtime {value} is not Node.js or Python, the only runtimes Lambda@Edge runs{describe(env)}")

    if props.get("PackageType") == "Image" or "ImageUri" in props:
        report.add(fn, "is a container image; Lambda@Edge runs only .zip functions")
    else:
        check_value(tpl, report, fn, props.get("Runtime", NO_VALUE), runtime)

    def architectures(value, env):
        if value is NO_VALUE:
            return  # Lambda's default is x86_64
        if value != ["x86_64"]:
            report.add(fn, f"Architectures {value} must be [x86_64]; Lambda@Edge does not run arm64{describe(env)}")

    check_value(tpl, report, fn, props.get("Architectures", NO_VALUE), architectures)

    environment = props.get("Environment")
    if environment is not None and tpl.branches(environment) != [{"Ref": "AWS::NoValue"}]:
        report.add(fn, "has Environment; Lambda@Edge allows no environment variables (bake them into edgethumb.json)")

    for key, feature in EDGE_UNSUPPORTED_PROPERTIES.items():
        if key in props and tpl.branches(props[key]) != [{"Ref": "AWS::NoValue"}]:
            report.add(fn, f"sets {key}; Lambda@Edge does not support {feature}")

    max_timeout = VIEWER_EVENT_MAX_TIMEOUT_S if viewer else ORIGIN_EVENT_MAX_TIMEOUT_S
    kind = "viewer" if viewer else "origin"

    def timeout(value, env):
        seconds = LAMBDA_DEFAULT_TIMEOUT_S if value is NO_VALUE else as_number(value, "Timeout")
        if seconds > max_timeout:
            report.add(fn, f"timeout {seconds:g} s exceeds the {max_timeout} s Lambda@Edge allows for {kind} events{describe(env)}")

    check_value(tpl, report, fn, props.get("Timeout", NO_VALUE), timeout)

    max_memory = VIEWER_EVENT_MAX_MEMORY_MB if viewer else ORIGIN_EVENT_MAX_MEMORY_MB

    def memory(value, env):
        if value is not NO_VALUE and as_number(value, "MemorySize") > max_memory:
            report.add(fn, f"memory {value} MB exceeds the {max_memory} MB Lambda@Edge allows for {kind} events{describe(env)}")

    check_value(tpl, report, fn, props.get("MemorySize", NO_VALUE), memory)

    def storage(value, env):
        if value is not NO_VALUE and as_number((value or {}).get("Size"), "EphemeralStorage") > EDGE_MAX_EPHEMERAL_STORAGE_MB:
            report.add(fn, f"ephemeral storage {value['Size']} MB exceeds the {EDGE_MAX_EPHEMERAL_STORAGE_MB} MB Lambda@Edge allows{describe(env)}")

    check_value(tpl, report, fn, props.get("EphemeralStorage", NO_VALUE), storage)

    trust = trust_policy(tpl, fn, props)
    if trust is None:
        report.add(fn, "has no role trust policy in the template; Lambda@Edge needs a role trusted by lambda.amazonaws.com and edgelambda.amazonaws.com")
    else:
        missing = EDGE_TRUSTED_SERVICES - trusted_services(trust)
        if missing:
            report.add(fn, f"role is not trusted by {', '.join(sorted(missing))}; Lambda@Edge needs both lambda.amazonaws.com and edgelambda.amazonaws.com")

    check_permissions(tpl, fn, props, EDGE_ACTIONS, report)


def role_resource(tpl: Template, props: dict) -> str | None:
    role = target_of(props.get("Role"))
    if role and (tpl.resources.get(role) or {}).get("Type") == "AWS::IAM::Role":
        return role
    return None


def trust_policy(tpl: Template, fn: str, props: dict) -> dict | None:
    role = role_resource(tpl, props)
    if role:
        return (tpl.resources[role].get("Properties") or {}).get("AssumeRolePolicyDocument")
    if "Role" in props:
        return None  # an outside role: nothing to check here
    if tpl.resources[fn].get("Type") == "AWS::Serverless::Function":
        # SAM's generated role trusts only lambda.amazonaws.com unless told otherwise.
        return props.get("AssumeRolePolicyDocument") or {
            "Statement": [{"Effect": "Allow", "Principal": {"Service": ["lambda.amazonaws.com"]}, "Action": ["sts:AssumeRole"]}]
        }
    return None


def listify(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def trusted_services(doc: dict) -> set[str]:
    services: set[str] = set()
    for statement in listify(doc.get("Statement") or []):
        if statement.get("Effect") != "Allow":
            continue
        if "sts:AssumeRole" not in listify(statement.get("Action")):
            continue
        principal = statement.get("Principal") or {}
        services |= {str(s) for s in listify(principal.get("Service") or [])}
    return services


def check_permissions(tpl: Template, fn: str, props: dict, allowed: set[str], report: Report) -> None:
    """Only the allowed actions, on named resources; logs through the basic execution policy."""
    statements: list[dict] = []
    managed: list[Any] = []
    role = role_resource(tpl, props)
    if role:
        role_props = tpl.resources[role].get("Properties") or {}
        managed = list(role_props.get("ManagedPolicyArns") or [])
        for policy in role_props.get("Policies") or []:
            statements += listify((policy.get("PolicyDocument") or {}).get("Statement") or [])
        for logical_id, resource in tpl.resources.items():
            if resource.get("Type") in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
                roles = (resource.get("Properties") or {}).get("Roles") or []
                if any(target_of(r) == role for r in roles):
                    statements += listify(((resource.get("Properties") or {}).get("PolicyDocument") or {}).get("Statement") or [])
    elif "Role" not in props and tpl.resources[fn].get("Type") == "AWS::Serverless::Function":
        for policy in listify(props.get("Policies") or []):
            if isinstance(policy, dict) and "Statement" in policy:
                statements += listify(policy["Statement"])
            else:
                managed.append(policy)
        if (props.get("Events") or {}) and any(
            (e or {}).get("Type") == "SQS" for e in (props.get("Events") or {}).values()
        ):
            report.add(fn, "SAM's generated role adds AWSLambdaSQSQueueExecutionRole (sqs:* on every queue); give the function its own role")

    for arn in managed:
        text = json.dumps(arn, default=str)
        if not any(name in text for name in ALLOWED_MANAGED_POLICIES):
            report.add(fn, f"role has managed policy {text}; only {', '.join(sorted(ALLOWED_MANAGED_POLICIES))} is expected")
    for statement in statements:
        if statement.get("Effect") != "Allow":
            continue
        actions = {str(a) for a in listify(statement.get("Action") or [])}
        if "NotAction" in statement or "NotResource" in statement:
            report.add(fn, "role policy uses NotAction/NotResource; grant named actions on named resources")
        extra = sorted(actions - allowed - LOG_ACTIONS)
        if extra:
            report.add(fn, f"role allows {', '.join(extra)}; it needs only {', '.join(sorted(allowed))}")
        resources = listify(statement.get("Resource"))
        if "*" in resources and actions - LOG_ACTIONS:
            report.add(fn, f"role allows {', '.join(sorted(actions))} on every resource (\"*\"); name the bucket or queue")


# --------------------------------------------------------------------------- SQS workers


def sqs_triggers(tpl: Template) -> Iterator[tuple[str, str, dict]]:
    """(function, queue, event source properties) for every SQS trigger in the template."""
    for logical_id, resource in tpl.resources.items():
        kind = resource.get("Type")
        props = resource.get("Properties") or {}
        if kind == "AWS::Serverless::Function":
            for event in (props.get("Events") or {}).values():
                if (event or {}).get("Type") == "SQS":
                    source = event.get("Properties") or {}
                    queue = target_of(source.get("Queue"))
                    if queue:
                        yield logical_id, queue, source
        elif kind == "AWS::Lambda::EventSourceMapping":
            queue = target_of(props.get("EventSourceArn"))
            fn = target_of(props.get("FunctionName"))
            if queue and fn and (tpl.resources.get(queue) or {}).get("Type") == "AWS::SQS::Queue":
                yield fn, queue, props


def redrive_of(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise Unresolvable("RedrivePolicy is not JSON") from None
    return value


def check_worker(tpl: Template, fn: str, queue: str, source: dict, report: Report) -> None:
    report.checked.append(f"worker {fn} on {queue}")
    if (tpl.resources.get(queue) or {}).get("Type") != "AWS::SQS::Queue":
        report.add(fn, f"SQS trigger on {queue}, which is not a queue in this template")
        return
    queue_props = tpl.resources[queue].get("Properties") or {}
    fn_props = tpl.function_properties(fn) if fn in tpl.resources else {}
    timeout = fn_props.get("Timeout", LAMBDA_DEFAULT_TIMEOUT_S)
    visibility = queue_props.get("VisibilityTimeout", SQS_DEFAULT_VISIBILITY_S)
    try:
        for t_branch in tpl.branches(timeout):
            for v_branch in tpl.branches(visibility):
                for env in tpl.scenarios(t_branch, v_branch):
                    seconds = as_number(tpl.evaluate(t_branch, env), "Timeout")
                    visible = as_number(tpl.evaluate(v_branch, env), "VisibilityTimeout")
                    if seconds * VISIBILITY_FACTOR > visible:
                        report.add(
                            fn,
                            f"timeout {seconds:g} s x {VISIBILITY_FACTOR} = {seconds * VISIBILITY_FACTOR:g} s exceeds "
                            f"{queue}'s visibility timeout {visible:g} s; jobs would be redelivered while still running{describe(env)}",
                        )
    except Unresolvable as why:
        report.add(fn, f"cannot verify timeout against {queue}'s visibility timeout ({why})")

    if queue_props.get("RedrivePolicy") is None:
        report.add(queue, "has no RedrivePolicy; failed jobs must go to a dead-letter queue")

    if "ReportBatchItemFailures" not in listify(source.get("FunctionResponseTypes") or []):
        report.add(fn, f"SQS trigger on {queue} lacks FunctionResponseTypes [ReportBatchItemFailures]; one bad job would retry the whole batch")

    if fn in tpl.resources:
        check_permissions(tpl, fn, fn_props, WORKER_ACTIONS, report)


def check_redrive(tpl: Template, queue: str, report: Report) -> None:
    """A queue's maxReceiveCount: at least 3 (a throttled or cold worker gets retries), at most 5."""
    redrive = (tpl.resources[queue].get("Properties") or {}).get("RedrivePolicy")
    if redrive is None:
        return

    def receive_count(count, env):
        if count is None or not (MIN_MAX_RECEIVE_COUNT <= as_number(count, "maxReceiveCount") <= MAX_MAX_RECEIVE_COUNT):
            report.add(queue, f"RedrivePolicy maxReceiveCount {count} is outside {MIN_MAX_RECEIVE_COUNT}..{MAX_MAX_RECEIVE_COUNT}{describe(env)}")

    try:
        policy = redrive_of(redrive)
        if not isinstance(policy, dict):
            raise Unresolvable("RedrivePolicy is not an object")
        check_value(tpl, report, queue, policy.get("maxReceiveCount"), receive_count)
    except Unresolvable as why:
        report.add(queue, f"cannot verify RedrivePolicy ({why})")


# --------------------------------------------------------------------------- bundle and config


def check_edge_config_text(text: str, where: str, report: Report) -> None:
    """The edge's own verdict (`edgethumb edge-config check`): the keys, types and bounds of
    EdgeConfig, so this check and the cold start cannot drift apart."""
    try:
        reason = edge_config.check_text(text, where)
    except (edge_config.ConfigError, OSError, subprocess.SubprocessError) as error:
        report.add(where, f"cannot be checked ({error})")
        return
    if reason:
        report.add(where, reason)


def check_edge_bundle(path: Path, handler: str | None, viewer: bool, report: Report) -> None:
    where = str(path)
    report.checked.append(f"edge bundle {path.name}")
    size = path.stat().st_size
    limit = VIEWER_EVENT_MAX_ZIP_BYTES if viewer else ORIGIN_EVENT_MAX_ZIP_BYTES
    if size > limit:
        report.add(where, f"is {size:,} bytes zipped; Lambda@Edge allows {limit:,} ({limit // (1024 * 1024)} MiB)")
    try:
        with zipfile.ZipFile(path) as bundle:
            names = set(bundle.namelist())
            unzipped = sum(info.file_size for info in bundle.infolist())
            if unzipped > MAX_UNZIPPED_BYTES:
                report.add(where, f"unzips to {unzipped:,} bytes; Lambda allows {MAX_UNZIPPED_BYTES:,}")
            if handler:
                module = handler.rsplit(".", 1)[0]
                candidates = [f"{module}{ext}" for ext in (".mjs", ".js", ".cjs", ".py")]
                if not names.intersection(candidates):
                    report.add(where, f"has no {' or '.join(candidates[:3])} at its root for handler {handler}")
            if EDGE_CONFIG_NAME in names:
                check_edge_config_text(bundle.read(EDGE_CONFIG_NAME).decode("utf-8", "replace"), f"{where}!{EDGE_CONFIG_NAME}", report)
    except zipfile.BadZipFile:
        report.add(where, "is not a zip file")


# --------------------------------------------------------------------------- main


def load_template(path: Path) -> Template:
    try:
        from cfnlint.decode import decode
    except ImportError:
        sys.exit("check_deploy: cfn-lint is not installed; run it from the project venv (scripts/test.sh sets it up)")
    data, errors = decode(str(path))
    if errors or data is None:
        for error in errors or []:
            print(f"{path}: cannot parse: {error}", file=sys.stderr)
        sys.exit(2)
    return Template(data, path.name)


def _load_sibling(name: str):
    """A module beside this script (imported by path: the tests load this file by path too)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(template_path: Path, edge_zip: Path | None, edge_config: Path | None) -> Report:
    tpl = load_template(template_path)
    report = Report()

    edge_events: dict[str, set[str]] = {}
    assocs = list(associations(tpl))
    for assoc in assocs:
        fn = edge_function_of(tpl, assoc, report)
        if fn:
            edge_events.setdefault(fn, set()).add(assoc.event_type)
    if not assocs:
        report.add(template_path.name, "no CloudFront distribution associates an edge function")
    for fn, events in edge_events.items():
        check_edge_function(tpl, fn, events, report)

    triggers = list(sqs_triggers(tpl))
    for fn, queue, source in triggers:
        check_worker(tpl, fn, queue, source, report)

    for logical_id, resource in tpl.resources.items():
        if resource.get("Type") == "AWS::SQS::Queue":
            check_redrive(tpl, logical_id, report)

    # The viewer-request CloudFront Function and its KeyValueStore (scripts/viewer_function.py).
    viewer_function = _load_sibling("viewer_function")
    for fn in viewer_function.check(tpl.resources, report.add):
        report.checked.append(f"viewer-request function {fn}")

    if edge_zip is not None and edge_zip.exists():
        handlers = {str(tpl.function_properties(fn).get("Handler")) for fn in edge_events if fn in tpl.resources}
        viewer = any(e.startswith("viewer") for events in edge_events.values() for e in events)
        check_edge_bundle(edge_zip, handlers.pop() if len(handlers) == 1 else None, viewer, report)

    if edge_config is not None:
        report.checked.append(f"edge config {edge_config.name}")
        try:
            check_edge_config_text(edge_config.read_text(encoding="utf-8"), str(edge_config), report)
        except OSError as error:
            report.add(str(edge_config), f"cannot be read ({error.strerror})")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("template", nargs="?", type=Path, default=DEFAULT_TEMPLATE, help="SAM/CloudFormation template (default: deploy/template.yaml)")
    parser.add_argument("--edge-zip", type=Path, default=DEFAULT_EDGE_ZIP, help="edge bundle, checked when it exists (default: target/lambda/edge.zip)")
    parser.add_argument("--no-edge-zip", action="store_true", help="do not look at an edge bundle")
    parser.add_argument("--edge-config", type=Path, help="an edgethumb.json to check")
    args = parser.parse_args(argv)

    if not args.template.is_file():
        parser.error(f"no template at {args.template}")
    report = run(args.template, None if args.no_edge_zip else args.edge_zip, args.edge_config)
    for line in report.violations:
        print(line)
    if report.violations:
        print(f"check_deploy: {len(report.violations)} violation(s) in {args.template}", file=sys.stderr)
        return 1
    print(f"check_deploy: OK: {args.template.name}: " + "; ".join(report.checked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
