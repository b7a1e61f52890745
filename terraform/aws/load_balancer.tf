# An internal Application Load Balancer in front of the fleet, reached by the load
# generator, and the function that keeps its targets equal to the fleet's instances.

resource "aws_lb" "fleet" {
  #checkov:skip=CKV_AWS_91: access logs need an S3 bucket with its own policy; the demo's traffic is synthetic and counted by Prometheus.
  #checkov:skip=CKV_AWS_150: deletion protection would make `terraform destroy` of a short-lived demo fail.
  #checkov:skip=CKV2_AWS_20: internal listener without a domain or certificate, so there is no HTTPS listener to redirect to (see the listener).
  #checkov:skip=CKV2_AWS_28: internal load balancer reached only by the load generator's security group; a WAF adds cost and nothing to protect here.
  name                       = "${var.name}-fleet"
  internal                   = true
  load_balancer_type         = "application"
  security_groups            = [aws_security_group.alb.id]
  subnets                    = aws_subnet.private[*].id
  drop_invalid_header_fields = true
  enable_deletion_protection = false
}

resource "aws_lb_target_group" "fleet" {
  #checkov:skip=CKV_AWS_378: plain HTTP inside the VPC between the load balancer and nginx; there is no certificate on the demo instances.
  name                 = "${var.name}-fleet"
  port                 = 80
  protocol             = "HTTP"
  target_type          = "instance"
  vpc_id               = aws_vpc.demo.id
  deregistration_delay = 30

  # The agent's drain policy deregisters only from target groups of its own fleet.
  tags = {
    "fleetscale:fleet" = var.fleet_name
  }

  health_check {
    path                = "/healthz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "fleet" {
  #checkov:skip=CKV_AWS_2: internal demo listener without a domain or certificate; the traffic is synthetic load inside the VPC.
  #checkov:skip=CKV_AWS_103: no TLS on this listener (see CKV_AWS_2).
  load_balancer_arn = aws_lb.fleet.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.fleet.arn
  }
}

# Target registration: EC2 state changes and a schedule call the function, which makes
# the target group equal to the fleet's running instances.

data "archive_file" "register_targets" {
  type        = "zip"
  source_file = "${path.module}/lambda/register_targets.py"
  output_path = "${path.module}/.terraform/register_targets.zip"
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "register_targets" {
  name               = "${var.name}-register-targets"
  description        = "Keeps the fleet's target group equal to its running instances"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

data "aws_iam_policy_document" "register_targets" {
  statement {
    sid = "ReadInstancesAndTargets"
    # No resource-level permissions for these Describe calls.
    actions   = ["ec2:DescribeInstances", "elasticloadbalancing:DescribeTargetHealth"]
    resources = ["*"]
  }

  statement {
    sid       = "ChangeOnlyTheFleetsTargetGroup"
    actions   = ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"]
    resources = [aws_lb_target_group.fleet.arn]
  }

  statement {
    sid       = "WriteItsOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.register_targets.arn}:*"]
  }
}

resource "aws_iam_role_policy" "register_targets" {
  name   = "register-targets"
  role   = aws_iam_role.register_targets.id
  policy = data.aws_iam_policy_document.register_targets.json
}

resource "aws_cloudwatch_log_group" "register_targets" {
  #checkov:skip=CKV_AWS_158: the function logs instance ids only; a customer-managed KMS key would cost more than the demo's logs are worth.
  name              = "/aws/lambda/${var.name}-register-targets"
  retention_in_days = 365
}

resource "aws_lambda_function" "register_targets" {
  #checkov:skip=CKV_AWS_115: reserved concurrency is refused on accounts at the default limit of 10; each call reconciles the whole group, so overlapping calls agree.
  #checkov:skip=CKV_AWS_116: no dead-letter queue needed: every call reconciles from scratch and the schedule repeats it every few minutes.
  #checkov:skip=CKV_AWS_117: calls only AWS APIs; inside the VPC it would need the NAT gateway or endpoints for nothing gained.
  #checkov:skip=CKV_AWS_272: code signing needs a signing profile; the code is this repository's file, deployed by Terraform.
  #checkov:skip=CKV_AWS_173: the environment holds ids and tag names, no secrets; the default AWS-managed key encrypts it.
  #checkov:skip=CKV_AWS_50: X-Ray tracing adds cost and nothing for a function of two API calls.
  function_name    = "${var.name}-register-targets"
  description      = "Keeps the ${var.fleet_name} fleet's target group equal to its running instances"
  role             = aws_iam_role.register_targets.arn
  runtime          = "python3.12"
  handler          = "register_targets.handler"
  filename         = data.archive_file.register_targets.output_path
  source_code_hash = data.archive_file.register_targets.output_base64sha256
  timeout          = 30
  memory_size      = 128

  environment {
    variables = {
      TARGET_GROUP_ARN = aws_lb_target_group.fleet.arn
      FLEET_TAG_KEY    = local.fleet_tag_key
      FLEET_TAG_VALUE  = var.fleet_name
      VPC_ID           = aws_vpc.demo.id
    }
  }

  depends_on = [aws_iam_role_policy.register_targets, aws_cloudwatch_log_group.register_targets]
}

resource "aws_cloudwatch_event_rule" "instance_state_change" {
  name        = "${var.name}-instance-state-change"
  description = "EC2 instance state changes: the fleet's target group may need a change"

  event_pattern = jsonencode({
    source        = ["aws.ec2"]
    "detail-type" = ["EC2 Instance State-change Notification"]
    detail        = { state = ["running", "shutting-down", "stopping", "terminated"] }
  })
}

resource "aws_cloudwatch_event_rule" "reconcile_schedule" {
  name                = "${var.name}-reconcile-targets"
  description         = "Reconcile the fleet's target group even if an event was missed"
  schedule_expression = "rate(5 minutes)"
}

resource "aws_cloudwatch_event_target" "register_targets" {
  for_each = {
    state_change = aws_cloudwatch_event_rule.instance_state_change.name
    schedule     = aws_cloudwatch_event_rule.reconcile_schedule.name
  }

  rule = each.value
  arn  = aws_lambda_function.register_targets.arn
}

resource "aws_lambda_permission" "events" {
  for_each = {
    state_change = aws_cloudwatch_event_rule.instance_state_change.arn
    schedule     = aws_cloudwatch_event_rule.reconcile_schedule.arn
  }

  statement_id  = "events-${replace(each.key, "_", "-")}"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.register_targets.function_name
  principal     = "events.amazonaws.com"
  source_arn    = each.value
}
