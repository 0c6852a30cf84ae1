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
        "CARVANA_MAX_PIXELS",
        "LOG_LEVEL",
    }
    assert props["ReservedConcurrentExecutions"] == {"Ref": "ReservedConcurrency"}
    assert template["Parameters"]["ReservedConcurrency"]["MinValue"] >= 1
    assert {"EndpointName", "Bucket", "InputPrefix", "OutputPrefix"} <= set(template["Parameters"])


def test_api_routes_are_post_mask_and_uploads_and_their_urls_are_outputs(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    assert resources["MaskApi"]["Type"] == "AWS::ApiGatewayV2::Api"
    assert resources["MaskApi"]["Properties"]["ProtocolType"] == "HTTP"
    integration = resources["MaskIntegration"]["Properties"]
    assert integration["IntegrationUri"] == {"Fn::GetAtt": ["MaskFunction", "Arn"]}
    assert (integration["PayloadFormatVersion"], integration["TimeoutInMillis"]) == ("2.0", 29000)
    routes = {
        r["Properties"]["RouteKey"] for r in resources.values() if r["Type"] == "AWS::ApiGatewayV2::Route"
    }
    assert routes == {"POST /mask", "POST /uploads"}
    assert "Events" not in resources["MaskFunction"]["Properties"]  # no open route SAM would add
    for name, path in (("MaskApiUrl", "/mask"), ("UploadsUrl", "/uploads")):
        url = template["Outputs"][name]["Value"]["Fn::Sub"]
        assert url.startswith("https://${MaskApi}.execute-api.") and url.endswith(path)


def test_every_route_is_authenticated_iam_by_default_or_jwt(template: dict[str, Any]) -> None:
    """No route without an authorizer: AWS_IAM (SigV4) unless AuthMode is JWT, then the JWT authorizer."""
    params = template["Parameters"]
    assert params["AuthMode"]["Default"] == "IAM" and params["AuthMode"]["AllowedValues"] == ["IAM", "JWT"]
    assert template["Conditions"]["UseJwt"] == {"Fn::Equals": [{"Ref": "AuthMode"}, "JWT"]}
    resources = template["Resources"]
    for route in (r for r in resources.values() if r["Type"] == "AWS::ApiGatewayV2::Route"):
        props = route["Properties"]
        assert props["AuthorizationType"] == {"Fn::If": ["UseJwt", "JWT", "AWS_IAM"]}
        assert props["AuthorizerId"] == {
            "Fn::If": ["UseJwt", {"Ref": "MaskJwtAuthorizer"}, {"Ref": "AWS::NoValue"}]
        }
    jwt = resources["MaskJwtAuthorizer"]
    assert jwt["Condition"] == "UseJwt" and jwt["Properties"]["AuthorizerType"] == "JWT"
    assert jwt["Properties"]["JwtConfiguration"] == {
        "Issuer": {"Ref": "JwtIssuer"},
        "Audience": [{"Ref": "JwtAudience"}],
    }
    assert "JwtNeedsIssuerAndAudience" in template["Rules"]
    invoke = resources["MaskApiInvokePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert [s["Action"] for s in invoke] == ["execute-api:Invoke"]
    assert [r["Fn::Sub"].rsplit("/", 2)[-2:] for r in invoke[0]["Resource"]] == [
        ["POST", "mask"],
        ["POST", "uploads"],
    ]


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
        "PresignUploads",
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
    # No s3:ListBucket: a missing key must read as a forbidden one.
    assert scoped["PresignUploads"] == (
        "s3:PutObject",
        {"Fn::Sub": partition + ":s3:::${Bucket}/${InputPrefix}uploads/*"},
    )
    assert scoped["WriteLogs"] == (
        ["logs:CreateLogStream", "logs:PutLogEvents"],
        {"Fn::GetAtt": ["MaskFunctionLogs", "Arn"]},
    )
    assert all("Condition" not in s for s in statements.values())


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
    from trainer.wire import MAX_PIXELS

    assert template["Parameters"]["MaxPixels"]["Default"] == MAX_PIXELS
