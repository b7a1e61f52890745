# The fleet: no Auto Scaling group. fleetscale itself launches instances from this
# template into the private subnets (balancing the zones), tags them
# `fleetscale:fleet = <fleet_name>`, and terminates them.

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
  description = "Instances of the ${var.fleet_name} fleet, launched by fleetscale"

  image_id               = data.aws_ami.vm.id
  instance_type          = var.fleet_instance_type
  ebs_optimized          = true
  vpc_security_group_ids = [aws_security_group.fleet.id]
  update_default_version = true
  user_data              = base64gzip(templatefile("${path.module}/../shared/cloud-init/fleet.yaml.tftpl", local.fleet_cloud_init_vars))

  # No instance profile: fleet instances call no AWS API, and launching one with a role
  # would need iam:PassRole, which the agent's policy deliberately lacks.

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

# fleetscale launches the fleet's instances, so Terraform does not know them. Before the
# subnets and security groups can go, `terraform destroy` terminates them here (after the
# agent's VM is gone, so that nothing launches more), with the AWS CLI.
resource "terraform_data" "fleet_cleanup" {
  input = {
    region    = var.region
    vpc_id    = aws_vpc.demo.id
    tag_key   = local.fleet_tag_key
    tag_value = var.fleet_name
  }

  # Destroyed before what the instances use; never replaced (that would terminate the
  # fleet), so the dependencies are ordering only.
  depends_on = [
    aws_launch_template.fleet,
    aws_subnet.private,
    aws_security_group.fleet,
    aws_route_table_association.private,
    aws_nat_gateway.demo,
  ]

  provisioner "local-exec" {
    when        = destroy
    interpreter = ["/bin/sh", "-c"]
    command     = <<-EOT
      set -eu
      ids=$(aws ec2 describe-instances --region '${self.input.region}' \
        --filters 'Name=tag:${self.input.tag_key},Values=${self.input.tag_value}' \
                  'Name=vpc-id,Values=${self.input.vpc_id}' \
                  'Name=instance-state-name,Values=pending,running,stopping,stopped' \
        --query 'Reservations[].Instances[].InstanceId' --output text)
      if [ -n "$ids" ]; then
        echo "terminating the fleet's instances: $ids"
        aws ec2 terminate-instances --region '${self.input.region}' --instance-ids $ids >/dev/null
        aws ec2 wait instance-terminated --region '${self.input.region}' --instance-ids $ids
      fi
    EOT
  }
}
