# With `high_availability`: the etcd the two agents coordinate through, on a VM of its own
# (Debian's etcd-server), reachable on its client port from the agents only.

locals {
  etcd_cloud_init_vars = {
    etcd_ip        = local.etcd_ip
    etcd_port      = local.etcd_port
    platform_setup = local.install_ssm_agent
  }
  etcd_cloud_init = templatefile("${path.module}/../shared/cloud-init/etcd.yaml.tftpl", local.etcd_cloud_init_vars)
}

resource "aws_security_group" "etcd" {
  count       = var.high_availability ? 1 : 0
  name        = "${var.name}-etcd"
  description = "The etcd the fleetscale agents coordinate through"
  vpc_id      = aws_vpc.demo.id

  tags = { Name = "${var.name}-etcd" }
}

resource "aws_vpc_security_group_ingress_rule" "etcd_from_agents" {
  count                        = var.high_availability ? 1 : 0
  security_group_id            = aws_security_group.etcd[0].id
  description                  = "etcd clients: the agents only"
  ip_protocol                  = "tcp"
  from_port                    = local.etcd_port
  to_port                      = local.etcd_port
  referenced_security_group_id = aws_security_group.agent.id
}

resource "aws_vpc_security_group_egress_rule" "agent_to_etcd" {
  count                        = var.high_availability ? 1 : 0
  security_group_id            = aws_security_group.agent.id
  description                  = "Leases, elections and commands in etcd"
  ip_protocol                  = "tcp"
  from_port                    = local.etcd_port
  to_port                      = local.etcd_port
  referenced_security_group_id = aws_security_group.etcd[0].id
}

resource "aws_instance" "etcd" {
  count = var.high_availability ? 1 : 0
  #checkov:skip=CKV_AWS_126: detailed monitoring costs extra; the agents report etcd's latency and errors in their metrics.
  ami                         = data.aws_ami.vm.id
  instance_type               = var.etcd_instance_type
  subnet_id                   = aws_subnet.private[0].id
  private_ip                  = local.etcd_ip
  vpc_security_group_ids      = [aws_security_group.etcd[0].id]
  iam_instance_profile        = aws_iam_instance_profile.etcd[0].name
  associate_public_ip_address = false
  ebs_optimized               = true
  monitoring                  = false
  user_data_base64            = base64gzip(local.etcd_cloud_init)
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

  tags = { Name = "${var.name}-etcd" }

  depends_on = [aws_route_table_association.private, aws_nat_gateway.demo]
}

# etcd's identity: Session Manager only, for an operator's `etcdctl` on the VM.
resource "aws_iam_role" "etcd" {
  count              = var.high_availability ? 1 : 0
  name               = "${var.name}-etcd"
  description        = "The fleetscale demo's etcd: Session Manager only"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role_policy_attachment" "etcd_ssm" {
  count      = var.high_availability ? 1 : 0
  role       = aws_iam_role.etcd[0].name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "etcd" {
  count = var.high_availability ? 1 : 0
  name  = "${var.name}-etcd"
  role  = aws_iam_role.etcd[0].name
}
