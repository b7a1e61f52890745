# The monitoring VM: Prometheus (Azure service discovery of the scale set, and the agent),
# Grafana with the fleetscale dashboard, and the load generator.

locals {
  agent_targets = [for ip in local.agent_ips : "${ip}:${local.agent_port}"]

  prometheus_config_vars = {
    subscription_id = data.azurerm_subscription.current.subscription_id
    resource_group  = azurerm_resource_group.demo.name
    scale_set       = azurerm_linux_virtual_machine_scale_set.fleet.name
    exporter_port   = local.exporter_port
    agent_targets   = jsonencode(local.agent_targets)
  }

  # A new connection per request: the load balancer spreads connections, not requests.
  load_args = "--url http://${azurerm_lb.fleet.frontend_ip_configuration[0].private_ip_address}/ --trace /opt/fleetscale/demo-trace.csv --column requests_per_minute --peak-rps ${var.load_peak_rps} --speedup ${var.load_speedup} --disable-keepalive"

  monitor_cloud_init_vars = {
    prometheus_config = indent(6, templatefile("${path.module}/templates/prometheus.yml.tftpl", local.prometheus_config_vars))
    load_script       = indent(6, file("${path.module}/../shared/fleetscale-load.py"))
    trace             = indent(6, file("${path.module}/../shared/demo-trace.csv"))
    dashboard         = indent(6, file("${path.module}/../../examples/grafana-dashboard.json"))
    load_args         = local.load_args
    enable_grafana    = var.enable_grafana
    platform_setup    = "true"
  }
}

resource "azurerm_public_ip" "monitor" {
  count = local.monitor_public_ip ? 1 : 0

  name                = "${var.name}-monitor"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  allocation_method   = "Static"
  sku                 = "Standard"
  tags                = local.tags
}

resource "azurerm_network_interface" "monitor" {
  #checkov:skip=CKV_AZURE_119: a public IP only when operator_cidr names the one address the services NSG lets reach Prometheus and Grafana; none by default.
  name                = "${var.name}-monitor"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  tags                = local.tags

  ip_configuration {
    name                          = "monitor"
    subnet_id                     = azurerm_subnet.services.id
    private_ip_address_allocation = "Static"
    private_ip_address            = local.monitor_ip
    public_ip_address_id          = local.monitor_public_ip ? azurerm_public_ip.monitor[0].id : null
  }
}

resource "azurerm_network_interface_application_security_group_association" "monitor" {
  network_interface_id          = azurerm_network_interface.monitor.id
  application_security_group_id = azurerm_application_security_group.monitor.id
}

resource "azurerm_linux_virtual_machine" "monitor" {
  #checkov:skip=CKV_AZURE_50: the VM agent's run-command is how the README starts the load without SSH.
  name                            = "${var.name}-monitor"
  computer_name                   = "monitor"
  location                        = azurerm_resource_group.demo.location
  resource_group_name             = azurerm_resource_group.demo.name
  size                            = var.monitor_vm_size
  zone                            = var.zones[0]
  admin_username                  = local.admin_username
  disable_password_authentication = true
  encryption_at_host_enabled      = var.encryption_at_host
  allow_extension_operations      = true
  network_interface_ids           = [azurerm_network_interface.monitor.id]
  custom_data                     = base64gzip(templatefile("${path.module}/../shared/cloud-init/monitor.yaml.tftpl", local.monitor_cloud_init_vars))
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

  identity {
    type = "SystemAssigned"
  }

  boot_diagnostics {}

  depends_on = [
    azurerm_subnet_nat_gateway_association.services,
    azurerm_subnet_network_security_group_association.services,
  ]
}
