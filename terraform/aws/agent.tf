# The fleetscale agent on its own VM: a hardened systemd service (examples/fleetscale.service)
# whose config is rendered here, authenticated by the VM's instance profile. With
# `high_availability`, two such VMs with the same config coordinate through etcd (etcd.tf):
# each names itself by its host name.

locals {
  agent_config_vars = {
    tick             = var.agent_tick
    agent_port       = local.agent_port
    fleet_name       = var.fleet_name
    boot_delay       = var.boot_delay
    region           = var.region
    asg_name         = aws_autoscaling_group.fleet.name
    prometheus_url   = "http://${local.monitor_ip}:${local.prometheus_port}"
    per_instance_rps = var.instance_capacity_rps
    max_unserved     = var.max_unserved
    min_instances    = var.min_instances
    max_instances    = var.max_instances
    max_step_up      = var.max_step_up
    target_group_arn = aws_lb_target_group.fleet.arn
    coordination     = var.high_availability ? local.coordination_section : ""
  }

  coordination_vars = {
    etcd_endpoint = "http://${local.etcd_ip}:${local.etcd_port}"
  }
  coordination_section = templatefile("${path.module}/../shared/coordination.toml.tftpl", local.coordination_vars)

  agent_config = templatefile("${path.module}/templates/fleetscale.toml.tftpl", local.agent_config_vars)

  agent_cloud_init_vars = {
    config         = indent(6, local.agent_config)
    unit           = indent(6, file("${path.module}/../../examples/fleetscale.service"))
    install_script = indent(6, file("${path.module}/../shared/fleetscale-install.sh"))
    binary_url     = var.agent_binary_url
    binary_sha256  = var.agent_binary_sha256
    git_url        = var.agent_git_url
    git_branch     = var.agent_git_branch
    cargo_features = var.high_availability ? "aws,etcd" : "aws"
    platform_setup = local.install_ssm_agent
  }
}

resource "aws_instance" "agent" {
  count = local.agent_count
  #checkov:skip=CKV_AWS_126: detailed monitoring costs extra; the agent's own metrics are scraped by Prometheus.
  ami                         = data.aws_ami.vm.id
  instance_type               = var.agent_instance_type
  subnet_id                   = aws_subnet.private[0].id
  private_ip                  = local.agent_ips[count.index]
  vpc_security_group_ids      = [aws_security_group.agent.id]
  iam_instance_profile        = aws_iam_instance_profile.agent.name
  associate_public_ip_address = false
  ebs_optimized               = true
  monitoring                  = false
  user_data_base64            = base64gzip(templatefile("${path.module}/../shared/cloud-init/agent.yaml.tftpl", local.agent_cloud_init_vars))
  # A new config means a new agent VM: cloud-init writes the config at first boot only.
  user_data_replace_on_change = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_size           = var.root_volume_size
    volume_type           = "gp3"
    encrypted             = true
    delete_on_termination = true
  }

  tags = { Name = var.high_availability ? "${var.name}-agent-${count.index}" : "${var.name}-agent" }

  # Destroyed before the group, so that nothing resizes it while Terraform deletes it.
  depends_on = [
    aws_autoscaling_group.fleet,
    aws_iam_role_policy.agent_scaling,
    aws_iam_role_policy.agent_draining,
    aws_route_table_association.private,
    aws_nat_gateway.demo,
  ]
}

# The single agent of earlier versions is the first of the count.
moved {
  from = aws_instance.agent
  to   = aws_instance.agent[0]
}
