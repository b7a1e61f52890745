# With `high_availability`: the etcd the two agents coordinate through, on a VM of its own
# (Debian's etcd-server), reachable on its client port from the agents only (network.tf).

locals {
  etcd_cloud_init_vars = {
    etcd_ip        = local.etcd_ip
    etcd_port      = local.etcd_port
    platform_setup = "true"
  }
  etcd_cloud_init = templatefile("${path.module}/../shared/cloud-init/etcd.yaml.tftpl", local.etcd_cloud_init_vars)
}

resource "azurerm_network_interface" "etcd" {
  count               = var.high_availability ? 1 : 0
  name                = "${var.name}-etcd"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  tags                = local.tags

  ip_configuration {
    name                          = "etcd"
    subnet_id                     = azurerm_subnet.services.id
    private_ip_address_allocation = "Static"
    private_ip_address            = local.etcd_ip
  }
}

resource "azurerm_network_interface_application_security_group_association" "etcd" {
  count                         = var.high_availability ? 1 : 0
  network_interface_id          = azurerm_network_interface.etcd[0].id
  application_security_group_id = azurerm_application_security_group.etcd[0].id
}

resource "azurerm_linux_virtual_machine" "etcd" {
  count                           = var.high_availability ? 1 : 0
  name                            = "${var.name}-etcd"
  computer_name                   = "etcd"
  location                        = azurerm_resource_group.demo.location
  resource_group_name             = azurerm_resource_group.demo.name
  size                            = var.etcd_vm_size
  zone                            = var.zones[0]
  admin_username                  = local.admin_username
  disable_password_authentication = true
  encryption_at_host_enabled      = var.encryption_at_host
  allow_extension_operations      = false
  network_interface_ids           = [azurerm_network_interface.etcd[0].id]
  custom_data                     = base64gzip(local.etcd_cloud_init)
  tags                            = local.tags

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

  boot_diagnostics {}

  depends_on = [
    azurerm_subnet_nat_gateway_association.services,
    azurerm_subnet_network_security_group_association.services,
  ]
}
