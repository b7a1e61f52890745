# An internal Application Load Balancer in front of the fleet, reached by the load
# generator. The fleet's Auto Scaling group registers its instances in the target group.

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
