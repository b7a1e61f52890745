# The fleet: an Auto Scaling group launching this template into the private subnets.
# fleetscale (`kind = "aws-asg"`) sets its desired capacity and terminates the instances
# it chose, after draining them through the load balancer's target group.

# Every VM's image: the newest official Debian 12 image (Debian's own AWS account), or
# var.ami_id.
data "aws_ami" "vm" {
  most_recent = true
  owners      = var.ami_id == null ? ["136693071363"] : null

  filter {
    name   = var.ami_id == null ? "name" : "image-id"
    values = [var.ami_id == null ? "debian-12-amd64-*" : var.ami_id]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

locals {
  fleet_cloud_init_vars = {
    capacity_rps = var.instance_capacity_rps
  }
}

resource "aws_launch_template" "fleet" {
  name        = "${var.name}-${var.fleet_name}"
  description = "Instances of the ${var.fleet_name} fleet, launched by its Auto Scaling group"

  image_id               = data.aws_ami.vm.id
  instance_type          = var.fleet_instance_type
  ebs_optimized          = true
  vpc_security_group_ids = [aws_security_group.fleet.id]
  update_default_version = true
  user_data              = base64gzip(templatefile("${path.module}/../shared/cloud-init/fleet.yaml.tftpl", local.fleet_cloud_init_vars))

  # No instance profile: fleet instances call no AWS API.

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = data.aws_ami.vm.root_device_name

    ebs {
      volume_size           = var.root_volume_size
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = false
  }
}

# The provider's default tags do not reach Auto Scaling groups; the group copies them.
data "aws_default_tags" "current" {}

# Auto Scaling uses its service-linked role (AWSServiceRoleForAutoScaling), which AWS
# creates with the account's first group: nothing to declare here.
resource "aws_autoscaling_group" "fleet" {
  name                = "${var.name}-${var.fleet_name}"
  vpc_zone_identifier = aws_subnet.private[*].id
  min_size            = var.min_instances
  max_size            = var.max_instances
  # The size at creation only: from then on fleetscale sets it (ignore_changes below).
  desired_capacity = var.min_instances

  launch_template {
    id = aws_launch_template.fleet.id
    # A change to the template reaches new instances without a change to the group.
    version = "$Latest"
  }

  # The group registers every instance it launches; fleetscale deregisters them to drain.
  target_group_arns = [aws_lb_target_group.fleet.arn]

  # The load balancer's health check decides; the grace period covers the first boot's
  # package installs (boot_delay).
  health_check_type         = "ELB"
  health_check_grace_period = 300

  # The agent's policy resizes only groups carrying its fleet tag; the drain's mark is an
  # EC2 tag it may set only on instances carrying it, so the tag is propagated.
  tag {
    key                 = local.fleet_tag_key
    value               = var.fleet_name
    propagate_at_launch = true
  }

  tag {
    key                 = "Name"
    value               = "${var.name}-${var.fleet_name}"
    propagate_at_launch = true
  }

  dynamic "tag" {
    for_each = { for key, value in data.aws_default_tags.current.tags : key => value if !contains([local.fleet_tag_key, "Name"], key) }

    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    # fleetscale owns the desired capacity; an apply must not reset it.
    ignore_changes = [desired_capacity]
  }

  # Instances boot into a network that installs their packages and passes the load
  # balancer's health checks; on destroy the group (and its instances) goes first.
  depends_on = [
    aws_route_table_association.private,
    aws_nat_gateway.demo,
    aws_vpc_security_group_egress_rule.outbound_web,
    aws_vpc_security_group_ingress_rule.fleet_from_alb,
    aws_vpc_security_group_egress_rule.alb_to_fleet,
    aws_lb_listener.fleet,
  ]
}
