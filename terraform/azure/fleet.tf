# The fleet: a Uniform VM Scale Set across the zones, with no public IPs, whose capacity
# fleetscale owns after creation (sku.capacity raised on growth, named instances deleted on
# shrink).

locals {
  fleet_cloud_init_vars = {
    capacity_rps = var.instance_capacity_rps
  }
}

resource "azurerm_linux_virtual_machine_scale_set" "fleet" {
  name                            = "${var.name}-${var.fleet_name}"
  computer_name_prefix            = var.fleet_name
  location                        = azurerm_resource_group.demo.location
  resource_group_name             = azurerm_resource_group.demo.name
  sku                             = var.fleet_vm_size
  instances                       = var.min_instances
  zones                           = var.zones
  zone_balance                    = false
  overprovision                   = false
  upgrade_mode                    = "Manual"
  admin_username                  = local.admin_username
  disable_password_authentication = true
  encryption_at_host_enabled      = var.encryption_at_host
  extension_operations_enabled    = false
  custom_data                     = base64gzip(templatefile("${path.module}/../shared/cloud-init/fleet.yaml.tftpl", local.fleet_cloud_init_vars))

  admin_ssh_key {
    username   = local.admin_username
    public_key = local.admin_ssh_key
  }

  source_image_reference {
    publisher = local.debian_image.publisher
    offer     = local.debian_image.offer
    sku       = local.debian_image.sku
    version   = local.debian_image.version
  }

  os_disk {
    caching              = "ReadWrite"
    storage_account_type = var.os_disk_type
  }

  network_interface {
    name    = "fleet"
    primary = true

    ip_configuration {
      name                                   = "fleet"
      primary                                = true
      subnet_id                              = azurerm_subnet.fleet.id
      load_balancer_backend_address_pool_ids = [azurerm_lb_backend_address_pool.fleet.id]
      application_security_group_ids         = [azurerm_application_security_group.fleet.id]
    }
  }

  boot_diagnostics {}

  tags = merge(local.tags, { "fleetscale:fleet" = var.fleet_name })

  lifecycle {
    # fleetscale owns the capacity, and marks each growth with a tag of its own.
    ignore_changes = [instances, tags["fleetscale-grow"]]
  }

  depends_on = [
    azurerm_subnet_nat_gateway_association.fleet,
    azurerm_subnet_network_security_group_association.fleet,
    azurerm_lb_rule.http,
  ]
}
