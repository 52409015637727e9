"""covidxray.data"""
