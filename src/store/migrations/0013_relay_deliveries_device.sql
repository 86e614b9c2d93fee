-- A dead device token ends the device's pending deliveries
-- (`deactivate_device`): found by device, not by scanning the table.
CREATE INDEX relay_deliveries_device ON relay_deliveries(device_id);
