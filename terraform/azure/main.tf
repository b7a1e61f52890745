data "azurerm_subscription" "current" {}

resource "azurerm_resource_group" "demo" {
  name     = var.name
  location = var.location
  tags     = local.tags
}

locals {
  tags = merge(var.tags, { "fleetscale:demo" = var.name })

  fleet_subnet    = cidrsubnet(var.vnet_cidr, 8, 1)
  services_subnet = cidrsubnet(var.vnet_cidr, 8, 2)
  bastion_subnet  = cidrsubnet(var.vnet_cidr, 10, 1020)

  # Fixed addresses: Prometheus and the agents each need the other's in their config, the
  # agents etcd's (with `high_availability`).
  monitor_ip        = cidrhost(local.services_subnet, 10)
  agent_count       = var.high_availability ? 2 : 1
  agent_ips         = [for i in range(local.agent_count) : cidrhost(local.services_subnet, 11 + i)]
  etcd_ip           = cidrhost(local.services_subnet, 20)
  etcd_port         = 2379
  load_balancer_ip  = cidrhost(local.fleet_subnet, 250)
  admin_username    = "fleetscale"
  admin_ssh_key     = coalesce(var.admin_ssh_public_key, tls_private_key.admin.public_key_openssh)
  prometheus_port   = 9090
  grafana_port      = 3000
  agent_port        = 9910
  exporter_port     = 9113
  fleet_tag_key     = "fleetscale:fleet"
  grow_tag_key      = "fleetscale-grow"
  debian_image      = { publisher = "Debian", offer = "debian-12", sku = "12-gen2", version = "latest" }
  monitor_public_ip = var.operator_cidr != ""
}

# Azure requires an SSH key for Linux VMs even when nothing can reach their SSH. The key
# lives in the Terraform state; pass admin_ssh_public_key to use your own instead.
resource "tls_private_key" "admin" {
  algorithm = "ED25519"
}
