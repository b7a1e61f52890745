"""Keeps the load balancer's target group equal to the fleet's running instances.

fleetscale launches and terminates the fleet's instances directly (RunInstances and
TerminateInstances), so nothing registers them with the load balancer. EventBridge calls
this function on every EC2 state change and every few minutes; each call reconciles the
whole target group with the running instances that carry the fleet tag, so a missed or
repeated event does no harm. An instance fleetscale is draining (tag fleetscale:draining)
is left out: fleetscale deregistered it, and registering it again would send it requests
until its removal.
"""

import json
import os

import boto3

ec2 = boto3.client("ec2")
elbv2 = boto3.client("elbv2")

TARGET_GROUP_ARN = os.environ["TARGET_GROUP_ARN"]
FLEET_TAG_KEY = os.environ["FLEET_TAG_KEY"]
FLEET_TAG_VALUE = os.environ["FLEET_TAG_VALUE"]
DRAINING_TAG_KEY = "fleetscale:draining"
VPC_ID = os.environ["VPC_ID"]


def running_fleet_instances():
    filters = [
        {"Name": f"tag:{FLEET_TAG_KEY}", "Values": [FLEET_TAG_VALUE]},
        {"Name": "vpc-id", "Values": [VPC_ID]},
        {"Name": "instance-state-name", "Values": ["running"]},
    ]
    ids = set()
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            ids.update(
                i["InstanceId"]
                for i in reservation["Instances"]
                if not any(t["Key"] == DRAINING_TAG_KEY for t in i.get("Tags", []))
            )
    return ids


def registered_targets():
    health = elbv2.describe_target_health(TargetGroupArn=TARGET_GROUP_ARN)
    return {d["Target"]["Id"] for d in health["TargetHealthDescriptions"]}


def handler(event, context):
    running = running_fleet_instances()
    registered = registered_targets()
    register = sorted(running - registered)
    deregister = sorted(registered - running)
    if register:
        elbv2.register_targets(
            TargetGroupArn=TARGET_GROUP_ARN, Targets=[{"Id": i} for i in register]
        )
    if deregister:
        elbv2.deregister_targets(
            TargetGroupArn=TARGET_GROUP_ARN, Targets=[{"Id": i} for i in deregister]
        )
    summary = {"running": len(running), "registered": register, "deregistered": deregister}
    print(json.dumps(summary))
    return summary
