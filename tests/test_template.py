"""lambda/template.yaml: cfn-lint clean, and the function's role can do exactly what it needs.

The role is the security boundary of the public API: these tests pin every statement's actions and
resources, so widening one (a wildcard, a whole bucket) fails here before it reaches an account.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

TEMPLATE = Path(__file__).resolve().parents[1] / "lambda" / "template.yaml"


class CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short forms (!Ref, !Sub, !GetAtt ...) as {"Fn::...": value} dicts."""


def _intrinsic(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def _statements(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    role = template["Resources"]["MaskFunctionRole"]["Properties"]
    (policy,) = role["Policies"]
    return {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}


def test_cfn_lint_reports_nothing() -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_function_runs_the_handler_on_python312_with_its_config(template: dict[str, Any]) -> None:
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    function = template["Resources"]["MaskFunction"]
    assert function["Type"] == "AWS::Serverless::Function"
    props = function["Properties"]
    assert (props["Runtime"], props["Handler"], props["CodeUri"]) == ("python3.12", "handler.handler", ".")
    # lambda/Makefile builds the package, so trainer/wire.py goes with the handler.
    assert function["Metadata"] == {"BuildMethod": "makefile"}
    assert "build-MaskFunction:" in (TEMPLATE.parent / "Makefile").read_text()
    assert 128 <= props["MemorySize"] <= 1024 and 10 <= props["Timeout"] <= 30
    assert props["Role"] == {"Fn::GetAtt": ["MaskFunctionRole", "Arn"]}
    env = props["Environment"]["Variables"]
    assert env["ENDPOINT_NAME"] == {"Ref": "EndpointName"}
    assert env["INPUT_S3_PREFIX"] == {"Fn::Sub": "s3://${Bucket}/${InputPrefix}"}
    assert env["OUTPUT_S3_PREFIX"] == {"Fn::Sub": "s3://${Bucket}/${OutputPrefix}"}
    assert set(env) == {
        "ENDPOINT_NAME",
        "INPUT_S3_PREFIX",
        "OUTPUT_S3_PREFIX",
        "MAX_IMAGE_BYTES",
        "LOG_LEVEL",
    }
    assert {"EndpointName", "Bucket", "InputPrefix", "OutputPrefix"} <= set(template["Parameters"])


def test_api_route_is_post_mask_and_its_url_is_an_output(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    assert resources["MaskApi"]["Type"] == "AWS::Serverless::HttpApi"
    event = resources["MaskFunction"]["Properties"]["Events"]["Mask"]
    assert event["Type"] == "HttpApi"
    assert event["Properties"]["Path"] == "/mask" and event["Properties"]["Method"] == "POST"
    assert event["Properties"]["PayloadFormatVersion"] == "2.0"
    url = template["Outputs"]["MaskApiUrl"]["Value"]["Fn::Sub"]
    assert url.startswith("https://${MaskApi}.execute-api.") and url.endswith("/mask")


def test_role_is_assumable_by_lambda_only(template: dict[str, Any]) -> None:
    trust = template["Resources"]["MaskFunctionRole"]["Properties"]["AssumeRolePolicyDocument"]
    assert trust["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]
    assert "ManagedPolicyArns" not in template["Resources"]["MaskFunctionRole"]["Properties"]


def test_role_statements_are_exactly_scoped(template: dict[str, Any]) -> None:
    statements = _statements(template)
    assert set(statements) == {
        "InvokeTheEndpoint",
        "ReadInputPhotos",
        "ListInputPhotos",
        "WriteResults",
        "WriteLogs",
    }
    assert all(s["Effect"] == "Allow" for s in statements.values())
    scoped = {sid: (s["Action"], s["Resource"]) for sid, s in statements.items()}
    partition = "arn:${AWS::Partition}"
    assert scoped["InvokeTheEndpoint"] == (
        "sagemaker:InvokeEndpoint",
        {"Fn::Sub": partition + ":sagemaker:${AWS::Region}:${AWS::AccountId}:endpoint/${EndpointName}"},
    )
    assert scoped["ReadInputPhotos"] == (
        "s3:GetObject",
        {"Fn::Sub": partition + ":s3:::${Bucket}/${InputPrefix}*"},
    )
    assert scoped["WriteResults"] == (
        "s3:PutObject",
        {"Fn::Sub": partition + ":s3:::${Bucket}/${OutputPrefix}*"},
    )
    assert scoped["ListInputPhotos"] == ("s3:ListBucket", {"Fn::Sub": partition + ":s3:::${Bucket}"})
    assert statements["ListInputPhotos"]["Condition"] == {
        "StringLike": {"s3:prefix": {"Fn::Sub": "${InputPrefix}*"}}
    }
    assert scoped["WriteLogs"] == (
        ["logs:CreateLogStream", "logs:PutLogEvents"],
        {"Fn::GetAtt": ["MaskFunctionLogs", "Arn"]},
    )
    assert all("Condition" not in s for sid, s in statements.items() if sid != "ListInputPhotos")


def test_parameters_refuse_names_and_prefixes_that_would_widen_the_policy(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    endpoint = re.compile(params["EndpointName"]["AllowedPattern"])
    assert endpoint.fullmatch("carvana-unet-2024") and not endpoint.fullmatch("Carvana-Unet")
    prefix = re.compile(params["InputPrefix"]["AllowedPattern"])
    assert prefix.fullmatch("incoming/") and prefix.fullmatch("a/b/")
    for bad in ("", "/", "*", "incoming", "in*/"):
        assert not prefix.fullmatch(bad), bad
    assert params["OutputPrefix"]["AllowedPattern"] == params["InputPrefix"]["AllowedPattern"]


def test_the_photo_size_limit_is_the_wire_contracts(template: dict[str, Any]) -> None:
    from trainer.wire import ENDPOINT_PAYLOAD_LIMIT

    limit = template["Parameters"]["MaxImageBytes"]
    assert limit["Default"] == limit["MaxValue"] == ENDPOINT_PAYLOAD_LIMIT
