# The monitoring VM: Prometheus (EC2 service discovery of the fleet, and the agent),
# Grafana with the fleetscale dashboard, and the load generator.

locals {
  agent_targets = [for ip in local.agent_ips : "${ip}:${local.agent_port}"]

  prometheus_config_vars = {
    region        = var.region
    exporter_port = local.exporter_port
    fleet_tag_key = local.fleet_tag_key
    fleet_name    = var.fleet_name
    vpc_id        = aws_vpc.demo.id
    agent_targets = jsonencode(local.agent_targets)
  }

  load_args = "--url http://${aws_lb.fleet.dns_name}/ --trace /opt/fleetscale/demo-trace.csv --column requests_per_minute --peak-rps ${var.load_peak_rps} --speedup ${var.load_speedup}"

  monitor_cloud_init_vars = {
    prometheus_config = indent(6, templatefile("${path.module}/templates/prometheus.yml.tftpl", local.prometheus_config_vars))
    load_script       = indent(6, file("${path.module}/../shared/fleetscale-load.py"))
    trace             = indent(6, file("${path.module}/../shared/demo-trace.csv"))
    dashboard         = indent(6, file("${path.module}/../../examples/grafana-dashboard.json"))
    load_args         = local.load_args
    enable_grafana    = var.enable_grafana
    platform_setup    = local.install_ssm_agent
  }
}

resource "aws_instance" "monitor" {
  #checkov:skip=CKV_AWS_126: detailed monitoring costs extra; Prometheus watches what this demo is about.
  ami                         = data.aws_ami.vm.id
  instance_type               = var.monitor_instance_type
  subnet_id                   = aws_subnet.private[0].id
  private_ip                  = local.monitor_ip
  vpc_security_group_ids      = [aws_security_group.monitor.id]
  iam_instance_profile        = aws_iam_instance_profile.monitor.name
  associate_public_ip_address = false
  ebs_optimized               = true
  monitoring                  = false
  user_data_base64            = base64gzip(templatefile("${path.module}/../shared/cloud-init/monitor.yaml.tftpl", local.monitor_cloud_init_vars))
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

  tags = { Name = "${var.name}-monitor" }

  depends_on = [aws_route_table_association.private, aws_nat_gateway.demo]
}
